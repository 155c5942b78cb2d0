// Damage for the checksum tests, through the HDF5 C API: one bit of a dataset's stored data flipped in the file (as
// a failing disk or copy flips it, behind HDF5's back), and a file made to look written before opendit stored
// checksums (every crc32 attribute removed). Used by tests/io and the h5_damage tool of the command-line tests.
#pragma once
#include <hdf5.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace opendit::test {

// Flips bit 0 of the first byte of a chunk of `dataset` (e.g. "/latents"): the first, or with last_chunk the last
// (contiguous storage: of all of it). The first byte: the end of a chunk may lie past the dataset's rows.
inline void flip_stored_byte(const std::string& file, const std::string& dataset, bool last_chunk = false) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("cannot open " + file);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  if (d >= 0) {
    const hid_t dcpl = H5Dget_create_plist(d);
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
      hsize_t offset[32], chunks = 0;
      unsigned mask = 0;
      const hid_t space = H5Dget_space(d);  // HDF5 1.10 takes no H5S_ALL here
      H5Dget_num_chunks(d, space, &chunks);
      const hsize_t index = last_chunk && chunks > 0 ? chunks - 1 : 0;
      if (H5Dget_chunk_info(d, space, index, offset, &mask, &addr, &size) < 0) addr = HADDR_UNDEF;
      H5Sclose(space);
    } else {
      addr = H5Dget_offset(d);
      size = H5Dget_storage_size(d);
    }
    H5Pclose(dcpl);
    H5Dclose(d);
  }
  H5Fclose(f);
  if (addr == HADDR_UNDEF || size == 0) throw std::runtime_error("no stored data of " + dataset + " in " + file);
  std::FILE* fp = std::fopen(file.c_str(), "r+b");
  if (!fp) throw std::runtime_error("cannot write " + file);
  const long at = long(addr);
  std::fseek(fp, at, SEEK_SET);
  const int c = std::fgetc(fp);
  std::fseek(fp, at, SEEK_SET);
  std::fputc(c ^ 1, fp);
  std::fclose(fp);
}

// Removes the crc32 attribute of every dataset under `group` (recursively); returns how many it removed.
inline int strip_checksums_in(hid_t group) {
  H5G_info_t info;
  if (H5Gget_info(group, &info) < 0) throw std::runtime_error("cannot list a group");
  int removed = 0;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    char name[1024];
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
    const hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
    if (H5Iget_type(obj) == H5I_GROUP) {
      removed += strip_checksums_in(obj);
    } else if (H5Aexists(obj, "crc32") > 0) {
      H5Adelete(obj, "crc32");
      ++removed;
    }
    H5Oclose(obj);
  }
  return removed;
}

inline int strip_checksums(const std::string& file) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("cannot open " + file);
  const hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
  const int removed = strip_checksums_in(root);
  H5Gclose(root);
  H5Fclose(f);
  return removed;
}

}  // namespace opendit::test

// The command-line tests' way to damage HDF5 files (tests/support/h5_damage.hpp):
//   h5_damage flip FILE DATASET   flips one bit of the dataset's stored data
//   h5_damage strip FILE          removes every crc32 attribute (a file from before checksums)
#include <cstdio>
#include <cstring>
#include <exception>

#include "support/h5_damage.hpp"

int main(int argc, char** argv) {
  try {
    if (argc == 4 && std::strcmp(argv[1], "flip") == 0) {
      opendit::test::flip_stored_byte(argv[2], argv[3]);
      return 0;
    }
    if (argc == 3 && std::strcmp(argv[1], "strip") == 0) {
      std::printf("removed %d crc32 attributes\n", opendit::test::strip_checksums(argv[2]));
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "h5_damage: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: %s flip FILE DATASET | strip FILE\n", argv[0]);
  return 2;
}

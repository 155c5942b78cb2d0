// Internals of the HDF5 layer shared by io/h5.cpp, io/h5_dataset.cpp and io/h5_file.cpp: the process-wide lock
// every call into HDF5 holds, and small helpers.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "io/h5.hpp"

namespace opendit::io::h5_detail {

// Holds the process-wide HDF5 lock and makes sure HDF5 prints nothing itself (the setting is per thread in
// thread-safe builds, global otherwise).
struct Lock {
  std::lock_guard<std::recursive_mutex> guard{h5_mutex()};
  Lock() {
    thread_local bool silenced = false;
    if (!silenced) H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), silenced = true;
  }
};

template <typename Id>
Id check(Id rc, const std::string& file, const std::string& object, const char* what) {
  if (rc < 0) h5_fail(file, object, what);
  return rc;
}

inline std::vector<hsize_t> to_hsize(const std::vector<std::int64_t>& v) { return {v.begin(), v.end()}; }

}  // namespace opendit::io::h5_detail

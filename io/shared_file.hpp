// One HDF5 file written by every rank of a group, the way the library allows it: with parallel HDF5 the file is
// created collectively through MPI-IO and each rank's part goes in collective transfers; with serial HDF5 (or when
// asked) rank 0 creates the file and its structure, then the ranks open it, write their part and close it in turn.
// Failures are agreed on (ProcessGroup::agree): every rank stops alike with the message of the first failing rank,
// except a failure inside parallel HDF5's collective transfers, which only the failing ranks see: that one is an
// opendit::Error of the rank (the job ends with MPI_Abort; see write_shared_file).
// Used by checkpoints (io/checkpoint.cpp) and the row writer (io/row_writer.hpp).
#pragma once
#include <functional>
#include <string>

#include "io/h5.hpp"
#include "parallel/process_group.hpp"

namespace opendit::io {

// True when shared files go through MPI-IO: the HDF5 library is parallel, serial writes are not forced and the group
// has more than one rank (a world of one writes through the POSIX driver: no MPI-IO, and a failed write closes
// cleanly, where parallel HDF5 1.10 crashes closing an MPI-IO file whose write failed).
bool collective_writes(bool force_serial, const parallel::ProcessGroup& group);

// create_structure: groups, datasets and attributes; it runs on every rank with parallel HDF5 (which wants identical
// metadata everywhere) and on rank 0 alone otherwise. write_mine(file, collective): this rank's data; with
// collective = true every rank calls every transfer (a rank with nothing to write selects nothing).
void write_shared_file(const std::string& path, const parallel::ProcessGroup& group, bool force_serial,
                       const std::function<void(H5File&)>& create_structure,
                       const std::function<void(H5File&, bool collective)>& write_mine);

}  // namespace opendit::io

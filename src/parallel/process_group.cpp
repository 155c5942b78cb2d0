// ProcessGroup over an MPI communicator (see process_group.hpp).
#include "parallel/process_group.hpp"

#include <c10/util/Exception.h>

#include <climits>

#include "core/error.hpp"
#include "parallel/mpi_comm.hpp"

namespace opendit::parallel {

namespace {

int count_of(std::size_t n, const char* what) {
  if (n > std::size_t(INT_MAX)) throw Error(cat(what, ": ", n, " elements exceed one MPI call"));
  return int(n);
}

}  // namespace

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(cat(what, " failed: ", std::string(text, len)));
}

ProcessGroup::Impl::~Impl() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned && !finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
}

ProcessGroup::ProcessGroup(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {
  mpi_check(MPI_Comm_rank(impl_->comm, &rank_), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(impl_->comm, &size_), "MPI_Comm_size");
}

ProcessGroup ProcessGroup::world() {
  auto impl = std::make_shared<Impl>();
  mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm), "MPI_Comm_dup");
  return ProcessGroup(std::move(impl));
}

ProcessGroup ProcessGroup::self() {
  auto impl = std::make_shared<Impl>();
  impl->comm = MPI_COMM_SELF;
  impl->owned = false;
  return ProcessGroup(std::move(impl));
}

ProcessGroup ProcessGroup::split(int color, int key) const {
  auto impl = std::make_shared<Impl>();
  mpi_check(MPI_Comm_split(impl_->comm, color, key, &impl->comm), "MPI_Comm_split");
  return ProcessGroup(std::move(impl));
}

ProcessGroup ProcessGroup::dup() const {
  auto impl = std::make_shared<Impl>();
  mpi_check(MPI_Comm_dup(impl_->comm, &impl->comm), "MPI_Comm_dup");
  return ProcessGroup(std::move(impl));
}

namespace {
bool g_thread_multiple = false;
}  // namespace

bool mpi_thread_multiple() { return g_thread_multiple; }
void set_mpi_thread_multiple(bool on) { g_thread_multiple = on; }

ProcessGroup ProcessGroup::node_local() const {
  auto impl = std::make_shared<Impl>();
  mpi_check(MPI_Comm_split_type(impl_->comm, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &impl->comm),
            "MPI_Comm_split_type");
  return ProcessGroup(std::move(impl));
}

void ProcessGroup::barrier() const {
  mpi_call("MPI_Barrier", [&] { return MPI_Barrier(impl_->comm); });
}

std::string ProcessGroup::broadcast(const std::string& value, int root) const {
  std::int64_t len = rank_ == root ? std::int64_t(value.size()) : 0;
  mpi_call("MPI_Bcast", [&] { return MPI_Bcast(&len, 1, MPI_INT64_T, root, impl_->comm); });
  std::string out = rank_ == root ? value : std::string(std::size_t(len), '\0');
  if (len > 0)
    mpi_call("MPI_Bcast",
             [&] { return MPI_Bcast(out.data(), count_of(out.size(), "MPI_Bcast"), MPI_CHAR, root, impl_->comm); });
  return out;
}

std::vector<std::int64_t> ProcessGroup::broadcast(std::vector<std::int64_t> values, int root) const {
  if (!values.empty())
    mpi_call("MPI_Bcast", [&] {
      return MPI_Bcast(values.data(), count_of(values.size(), "MPI_Bcast"), MPI_INT64_T, root, impl_->comm);
    });
  return values;
}

double ProcessGroup::all_reduce(double value, ReduceOp op) const {
  return all_reduce(std::vector<double>{value}, op)[0];
}

std::int64_t ProcessGroup::all_reduce(std::int64_t value, ReduceOp op) const {
  if (op == ReduceOp::Avg) throw Error("ProcessGroup::all_reduce: Avg of an integer");
  std::int64_t out = 0;
  mpi_call("MPI_Allreduce", [&] { return MPI_Allreduce(&value, &out, 1, MPI_INT64_T, mpi_op(op), impl_->comm); });
  return out;
}

std::vector<double> ProcessGroup::all_reduce(std::vector<double> values, ReduceOp op) const {
  if (!values.empty())
    mpi_call("MPI_Allreduce", [&] {
      return MPI_Allreduce(MPI_IN_PLACE, values.data(), count_of(values.size(), "MPI_Allreduce"), MPI_DOUBLE,
                           mpi_op(op), impl_->comm);
    });
  if (op == ReduceOp::Avg)
    for (double& v : values) v /= size_;
  return values;
}

std::vector<std::int64_t> ProcessGroup::all_gather(const std::vector<std::int64_t>& mine) const {
  std::vector<std::int64_t> all(mine.size() * std::size_t(size_));
  const int n = count_of(mine.size(), "MPI_Allgather");
  mpi_call("MPI_Allgather",
           [&] { return MPI_Allgather(mine.data(), n, MPI_INT64_T, all.data(), n, MPI_INT64_T, impl_->comm); });
  return all;
}

std::vector<std::vector<std::int64_t>> ProcessGroup::gather(const std::vector<std::int64_t>& mine, int root) const {
  int count = count_of(mine.size(), "MPI_Gather");
  std::vector<int> counts(static_cast<std::size_t>(size_)), displs(static_cast<std::size_t>(size_));
  mpi_call("MPI_Gather", [&] { return MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, root, impl_->comm); });
  std::size_t total = 0;
  for (int r = 0; r < size_; ++r) displs[r] = count_of(total, "MPI_Gatherv"), total += std::size_t(counts[r]);
  std::vector<std::int64_t> flat(rank_ == root ? total : 0);
  mpi_call("MPI_Gatherv", [&] {
    return MPI_Gatherv(mine.data(), count, MPI_INT64_T, flat.data(), counts.data(), displs.data(), MPI_INT64_T, root,
                       impl_->comm);
  });
  std::vector<std::vector<std::int64_t>> out;
  if (rank_ != root) return out;
  for (int r = 0; r < size_; ++r) out.emplace_back(flat.begin() + displs[r], flat.begin() + displs[r] + counts[r]);
  return out;
}

std::vector<std::string> ProcessGroup::gather(const std::string& mine, int root) const {
  std::vector<std::int64_t> chars(mine.begin(), mine.end());
  std::vector<std::string> out;
  for (const auto& v : gather(chars, root)) out.emplace_back(v.begin(), v.end());
  return out;
}

void ProcessGroup::agree(const std::function<void()>& local) const {
  std::string message;
  std::int64_t failed = INT_MAX;
  try {
    local();
  } catch (const c10::Error& e) {  // torch's checks: the message without the C++ backtrace
    message = e.what_without_backtrace(), failed = rank_;
  } catch (const std::exception& e) {
    message = e.what(), failed = rank_;
  }
  const std::int64_t first = all_reduce(failed, ReduceOp::Min);
  if (first == INT_MAX) return;
  throw CollectiveError(broadcast(message, int(first)));
}

void ProcessGroup::in_turn(const std::function<void()>& fn) const {
  for (int r = 0; r < size_; ++r)
    agree([&] {
      if (rank_ == r) fn();
    });
}

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, std::size_t(len));
  s = s.substr(0, s.find_first_of(",\n"));  // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
  int major = 0, minor = 0;
  MPI_Get_version(&major, &minor);
  return s + " (MPI " + std::to_string(major) + "." + std::to_string(minor) + ")";
}

}  // namespace opendit::parallel

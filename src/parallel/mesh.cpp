#include "parallel/mesh.hpp"

#include <sstream>
#include <stdexcept>

#include "core/error.hpp"

namespace opendit {

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(cat(what, " failed: ", std::string(text, len)));
}

MeshCoord mesh_coord(int world_rank, int world_size, int sp_size) {
  if (sp_size < 1 || world_size % sp_size != 0)
    throw Error(cat("parallel.sp_size = ", sp_size, " does not divide the world size ", world_size,
                    ": run on a multiple of ", sp_size, " ranks or choose an sp_size that divides ", world_size));
  MeshCoord c;
  c.sp_group = world_rank / sp_size;
  c.sp_rank = world_rank % sp_size;
  c.dp_group = c.sp_rank;
  c.dp_rank = c.sp_group;
  return c;
}

Mesh::Mesh(MPI_Comm world, int sp_size) : sp_(sp_size) {
  mpi_check(MPI_Comm_rank(world, &rank_), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(world, &world_), "MPI_Comm_size");
  coord_ = mesh_coord(rank_, world_, sp_);
  mpi_check(MPI_Comm_dup(world, &world_comm_), "MPI_Comm_dup");
  mpi_check(MPI_Comm_split(world_comm_, coord_.sp_group, coord_.sp_rank, &sp_comm_), "MPI_Comm_split(sp)");
  mpi_check(MPI_Comm_split(world_comm_, coord_.dp_group, coord_.dp_rank, &dp_comm_), "MPI_Comm_split(dp)");
  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(world_comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
}

Mesh::~Mesh() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm* c : {&dp_comm_, &sp_comm_, &world_comm_})
    if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
}

std::vector<std::vector<int>> Mesh::sp_groups() const {
  std::vector<std::vector<int>> g(dp_size());
  for (int r = 0; r < world_; ++r) g[mesh_coord(r, world_, sp_).sp_group].push_back(r);
  return g;
}

std::vector<std::vector<int>> Mesh::dp_groups() const {
  std::vector<std::vector<int>> g(sp_);
  for (int r = 0; r < world_; ++r) g[mesh_coord(r, world_, sp_).dp_group].push_back(r);
  return g;
}

static std::string groups_text(const std::vector<std::vector<int>>& groups) {
  std::ostringstream os;
  const size_t shown = 8;  // a 1024-rank job should not print 512 groups
  for (size_t i = 0; i < groups.size() && i < shown; ++i) {
    os << (i ? " [" : "[");
    for (size_t j = 0; j < groups[i].size(); ++j) {
      if (j == 6 && groups[i].size() > 8) {
        os << " ... " << groups[i].back();
        break;
      }
      os << (j ? " " : "") << groups[i][j];
    }
    os << "]";
  }
  if (groups.size() > shown) os << " ... (" << groups.size() << " groups)";
  return os.str();
}

std::string Mesh::describe() const {
  std::ostringstream os;
  os << "world " << world_ << " = dp " << dp_size() << " x sp " << sp_ << "\n"
     << "  sp groups: " << groups_text(sp_groups()) << "\n"
     << "  dp groups: " << groups_text(dp_groups());
  return os.str();
}

}  // namespace opendit

#include "parallel/mesh.hpp"

#include <sstream>

#include "core/error.hpp"

namespace opendit::parallel {

MeshCoord mesh_coord(int world_rank, int world_size, int sp_size) {
  if (sp_size < 1 || world_size % sp_size != 0)
    throw CollectiveError(cat("parallel.sp_size = ", sp_size, " does not divide the world size ", world_size,
                    ": run on a multiple of ", sp_size, " ranks or choose an sp_size that divides ", world_size));
  MeshCoord c;
  c.sp_group = world_rank / sp_size;
  c.sp_rank = world_rank % sp_size;
  c.dp_group = c.sp_rank;
  c.dp_rank = c.sp_group;
  return c;
}

Mesh::Mesh(const ProcessGroup& world, int sp_size)
    : world_(world.split(0, world.rank())),
      sp_(sp_size),
      coord_(mesh_coord(world.rank(), world.size(), sp_size)),
      sp_group_(world_.split(coord_.sp_group, coord_.sp_rank)),
      dp_group_(world_.split(coord_.dp_group, coord_.dp_rank)) {
  const ProcessGroup node = world_.node_local();
  local_rank_ = node.rank();
  local_size_ = node.size();
}


std::vector<std::vector<int>> Mesh::sp_groups() const {
  std::vector<std::vector<int>> g(dp_size());
  for (int r = 0; r < world_.size(); ++r) g[mesh_coord(r, world_.size(), sp_).sp_group].push_back(r);
  return g;
}

std::vector<std::vector<int>> Mesh::dp_groups() const {
  std::vector<std::vector<int>> g(sp_);
  for (int r = 0; r < world_.size(); ++r) g[mesh_coord(r, world_.size(), sp_).dp_group].push_back(r);
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
  os << "world " << world_.size() << " = dp " << dp_size() << " x sp " << sp_ << "\n"
     << "  sp groups: " << groups_text(sp_groups()) << "\n"
     << "  dp groups: " << groups_text(dp_groups());
  return os.str();
}

}  // namespace opendit::parallel

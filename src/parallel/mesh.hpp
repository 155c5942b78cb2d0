// The process mesh: the world split into sequence-parallel (sp) groups of contiguous ranks and data-parallel (dp)
// groups of strided ranks. With world 8 and sp 2:  sp groups [0 1] [2 3] [4 5] [6 7];  dp groups [0 2 4 6] [1 3 5 7].
// Ranks of one sp group work on the same samples; dp groups hold one rank of every sp group.
#pragma once
#include <string>
#include <vector>

#include "parallel/process_group.hpp"

namespace opendit::parallel {

// Where one rank sits; pure arithmetic, testable without MPI.
struct MeshCoord {
  int sp_rank, sp_group;  // position inside its sp group, and which sp group
  int dp_rank, dp_group;  // position inside its dp group (= sp_group), and which dp group (= sp_rank)
};
// Throws opendit::CollectiveError if sp does not divide the world (every rank computes the same).
MeshCoord mesh_coord(int world_rank, int world_size, int sp_size);

class Mesh {
 public:
  Mesh(const ProcessGroup& world, int sp_size);  // collective over world

  int rank() const { return world_.rank(); }
  int world_size() const { return world_.size(); }
  int sp_size() const { return sp_; }
  int dp_size() const { return world_.size() / sp_; }
  const MeshCoord& coord() const { return coord_; }
  int local_rank() const { return local_rank_; }  // among the ranks of this node (picks the GPU)
  int local_size() const { return local_size_; }  // ranks on this node
  const ProcessGroup& world() const { return world_; }
  const ProcessGroup& sp() const { return sp_group_; }
  const ProcessGroup& dp() const { return dp_group_; }

  // The world ranks of every sp group and every dp group, e.g. {{0,1},{2,3}}.
  std::vector<std::vector<int>> sp_groups() const;
  std::vector<std::vector<int>> dp_groups() const;
  std::string describe() const;  // a few lines for `opendit info` and run logs

 private:
  ProcessGroup world_;
  int sp_ = 1;
  MeshCoord coord_{};
  ProcessGroup sp_group_, dp_group_;
  int local_rank_ = 0, local_size_ = 1;
};

}  // namespace opendit::parallel

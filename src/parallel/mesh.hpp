// The process mesh: the world split into sequence-parallel (sp) groups of contiguous ranks and data-parallel (dp)
// groups of strided ranks. With world 8 and sp 2:  sp groups [0 1] [2 3] [4 5] [6 7];  dp groups [0 2 4 6] [1 3 5 7].
// Ranks of one sp group work on the same samples; dp groups hold one rank of every sp group.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

namespace opendit {

// Where one rank sits; pure arithmetic, testable without MPI.
struct MeshCoord {
  int sp_rank, sp_group;  // position inside its sp group, and which sp group
  int dp_rank, dp_group;  // position inside its dp group (= sp_group), and which dp group (= sp_rank)
};
MeshCoord mesh_coord(int world_rank, int world_size, int sp_size);  // throws opendit::Error if sp does not divide

class Mesh {
 public:
  Mesh(MPI_Comm world, int sp_size);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int sp_size() const { return sp_; }
  int dp_size() const { return world_ / sp_; }
  const MeshCoord& coord() const { return coord_; }
  int local_rank() const { return local_rank_; }  // among the ranks of this node (picks the GPU)
  int local_size() const { return local_size_; }  // ranks on this node
  MPI_Comm world_comm() const { return world_comm_; }
  MPI_Comm sp_comm() const { return sp_comm_; }
  MPI_Comm dp_comm() const { return dp_comm_; }

  // The world ranks of every sp group and every dp group, e.g. {{0,1},{2,3}}.
  std::vector<std::vector<int>> sp_groups() const;
  std::vector<std::vector<int>> dp_groups() const;
  std::string describe() const;  // a few lines for `opendit info` and run logs

 private:
  int rank_ = 0, world_ = 1, sp_ = 1, local_rank_ = 0, local_size_ = 1;
  MeshCoord coord_{};
  MPI_Comm world_comm_ = MPI_COMM_NULL, sp_comm_ = MPI_COMM_NULL, dp_comm_ = MPI_COMM_NULL;
};

// Throws std::runtime_error naming the call when an MPI call fails (MPI_ERRORS_RETURN is set on the world).
void mpi_check(int rc, const char* what);

}  // namespace opendit

# Shared environment of the opendit Slurm jobs: sourced by every jobs/*.sbatch. Edit this file (not the scripts)
# for your cluster: modules, paths, NCCL. Submit the jobs from the repository root (sbatch copies a script away
# from the repository; SLURM_SUBMIT_DIR tells the script where it came from).

# The repository and the binary (built there with `make build`).
OPENDIT_ROOT=${OPENDIT_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
OPENDIT_BIN=${OPENDIT_BIN:-$OPENDIT_ROOT/build/bin/opendit}
# Where runs write (run.out_dir): a shared file system that every node sees.
OPENDIT_OUT=${OPENDIT_OUT:-$OPENDIT_ROOT/out}

# Site modules, if your cluster uses them (the build must have used the same MPI and CUDA):
# module load openmpi/4.1 cuda/13.0 hdf5/1.14-openmpi

# One CPU thread pool per rank: the GPU does the work; many torch threads per rank only compete for the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# NCCL (the gradient and ZeRO collectives between GPUs).
# NVLink multicast (NVLS, the NVSwitch's in-network reductions) is OFF: it reserves extra GPU memory for every
# communicator, needs the IMEX/fabric-manager setup that many clusters lack, and has hung or failed communicator
# creation on some driver/NCCL combinations; the ring/tree algorithms over NVLink are what opendit is measured with.
export NCCL_NVLS_ENABLE=0
# Fail loudly instead of hanging when a rank dies: the collective errors out and the job ends.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Between nodes: name the InfiniBand/Ethernet interface if NCCL picks a wrong one (site specific):
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_IB_HCA=mlx5

# A rank that meets an error alone waits this long for the others before ending the job (README, "Errors").
export OPENDIT_ERROR_GRACE_S=${OPENDIT_ERROR_GRACE_S:-30}

# For runs under mpirun instead of srun: mpirun answers SIGTERM by passing it on to its ranks only after this many
# seconds and killing them as many seconds later (default 1 s); 120 s leave opendit time to finish its step and write
# a checkpoint before it exits 75. (SIGUSR1 is forwarded at once by some mpirun builds and kept by others: signal
# the ranks themselves, docs/LONG_JOBS.md.)
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-120}

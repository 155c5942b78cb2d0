# Sourced by the `make run` demos (tools/digits_demo.sh, tools/video_demo.sh) after they set DECK and "$@":
# the binary, Python and mpirun to use, OpenMPI's root/oversubscription settings, the --set arguments in `sets`,
# and RUN, the run folder as the deck and any --set run.out_dir / run.name resolve it.
BUILD=${BUILD:-build}
BIN=${OPENDIT_BIN:-$BUILD/bin/opendit}
PYTHON=${PYTHON:-$(cat "$BUILD/.python" 2>/dev/null || echo python3)}
MPIRUN=${MPIRUN:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
sets=("$@")
out_dir=$(sed -n 's/^out_dir *= *"\(.*\)".*/\1/p' "$DECK"); name=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$DECK")
for s in "${sets[@]}"; do
  case "$s" in --set) ;; run.out_dir=*) out_dir=${s#*=} ;; run.name=*) name=${s#*=} ;; esac
done
RUN=$out_dir/$name

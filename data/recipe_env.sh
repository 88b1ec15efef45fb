# Sourced by imagenet.sh and places365.sh (data/ in the repository, crunet/recipes when installed);
# relative paths are the caller's current directory:
# usage/help, output folder and the environment settings both recipes share.
#   recipe_env NAME DEFAULT_OUT HELP_LAST_LINE SCRIPT "$@"
recipe_env() {
  local name=$1 default_out=$2 help_end=$3 script=$4
  shift 4
  if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n "2,${help_end}p" "$script" | sed 's/^# \{0,1\}//'
    exit 2
  fi
  ROOT=$1
  OUT=${2:-$default_out}
  PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  NUM_THREAD=${NUM_THREAD:-$(nproc 2>/dev/null || echo 4)}
  TRAIN_RESIZE=${TRAIN_RESIZE:-480}
  VAL_RESIZE=${VAL_RESIZE:-256}
  QUALITY=${QUALITY:-95}
  SEED=${SEED:-0}
  RECIPE=$name
}

die() { echo "$RECIPE: error: $*" >&2; exit 1; }

# Sourced by the scripts in scripts/: run_child, which runs a long command so that a signal to the script reaches it.
#
#   run_child [--tee FILE] COMMAND [ARGS ...]     (--tee: COMMAND's output also to FILE, as COMMAND | tee FILE)
#
# Run in the foreground, a command is out of reach of a SIGTERM sent to the script alone (`kill PID`, a batch
# system's cancel, `timeout`): bash runs its trap only once the command ends, so bash died at once without a
# word and the command ran on, orphaned. Here COMMAND runs in the background in a process group of its own,
# and SIGTERM, SIGINT and SIGHUP to the script are passed on to that group (COMMAND and the processes it
# started, as a terminal's Ctrl-C reaches them all); the command writes its own line (our Python commands:
# `PROG: terminated (SIGTERM)`, `PROG: interrupted`) and the script ends with its status (143, 130).
# The group of its own keeps a terminal's Ctrl-C (SIGINT to the script's process group) from reaching the
# command twice, once from the terminal and once passed on. After a signal the script stops once the command
# ends; where the command ended otherwise (it finished just then), the script says the line itself and exits
# with 128 + the signal's number. A signal the script was started with ignored stays ignored (bash sets no trap
# on it), in the command too.

run_child() {
  local tee_to=""
  if [ "$1" = --tee ]; then tee_to=$2; shift 2; fi
  RUN_CHILD_GROUP="" RUN_CHILD_SIGNAL="" RUN_CHILD_SIGNALS=0
  local signal
  for signal in TERM INT HUP; do trap "run_child_pass $signal" "$signal"; done
  set -m  # job control while the command starts: its process group is its own (and SIGINT is not ignored in it)
  if [ -n "$tee_to" ]; then  # tee ignores the signals and ends with the command: the log gets its last lines
    "$@" | (trap '' INT TERM HUP; exec tee "$tee_to") &
  else
    "$@" &
  fi
  set +m
  local last=$!
  RUN_CHILD_GROUP=$(jobs -p)  # the group's id: its first process, COMMAND ($! is tee's)
  [ -z "$RUN_CHILD_SIGNAL" ] || run_child_pass "$RUN_CHILD_SIGNAL"  # one that came while the command started
  local status came
  while :; do
    came=$RUN_CHILD_SIGNALS status=0
    wait "$last" || status=$?
    # wait ends early (status 128 + N) when a trapped signal comes: wait again (bash keeps an ended child's status)
    [ "$RUN_CHILD_SIGNALS" != "$came" ] || break
  done
  trap - TERM INT HUP
  [ -n "$RUN_CHILD_SIGNAL" ] || return "$status"
  local number
  number=$(kill -l "$RUN_CHILD_SIGNAL")
  if [ "$status" != $((128 + number)) ]; then
    local said=interrupted
    [ "$RUN_CHILD_SIGNAL" = INT ] || said="terminated (SIG$RUN_CHILD_SIGNAL)"
    echo "${0##*/}: $said" >&2
    status=$((128 + number))
  fi
  exit "$status"
}

# run_child's trap: pass the signal on to the command's process group (noted until the command has started), then
# SIGCONT: a command that read the terminal was stopped there (SIGTTIN: its group is not the terminal's) and would
# get the signal only once continued.
run_child_pass() {
  RUN_CHILD_SIGNAL=$1 RUN_CHILD_SIGNALS=$((RUN_CHILD_SIGNALS + 1))
  [ -z "$RUN_CHILD_GROUP" ] || { kill -s "$1" -- "-$RUN_CHILD_GROUP" && kill -s CONT -- "-$RUN_CHILD_GROUP"; } 2> /dev/null || :
}

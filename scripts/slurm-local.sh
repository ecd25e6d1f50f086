#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this machine (munged + slurmctld + slurmd, no slurmdbd,
# no cgroups, no systemd), so the Snakemake slurm profile can be tested against a real scheduler.
#
#   sudo scripts/slurm-local.sh start    install if needed, start, wait until the node is idle
#   sudo scripts/slurm-local.sh status   PIDs and sinfo; exit 0 only when the node answers
#   sudo scripts/slurm-local.sh stop     cancel jobs, stop the daemons this script started (by PID)
#
# Settings (environment, all optional):
#   SLURM_LOCAL_DIR          state, spool, logs and PID files          (default /tmp/slurm-local)
#   SLURM_LOCAL_PARTITION    name of the one partition                 (default debug)
#   SLURM_LOCAL_INSTALL      auto: apt-get install missing packages; no: fail instead (default auto)
#   SLURM_LOCAL_WAIT         seconds to wait for the node to come up  (default 60)
#   SLURM_LOCAL_MIN_JOB_AGE  seconds finished jobs stay visible to squeue (default 600)
#   SLURM_LOCAL_FAKE_GPU     N > 0: advertise N fake "gpu" GRES so `sbatch --gpus=N` is schedulable.
#                            Scheduling only: there is no GPU, the job merely sees
#                            CUDA_VISIBLE_DEVICES / SLURM_GPUS_ON_NODE                 (default 0)
#   SLURM_LOCAL_CPUS         announce this many CPUs instead of the machine's     (default: detected)
#   SLURM_LOCAL_MEMORY_MB    announce this much memory, so a profile's --mem requests fit on a
#                            small CI machine (not enforced: no cgroups)  (default: 95 % of detected)
#
# Why it looks like this (facts measured on Debian 12, Slurm 22.05, snakemake 9.27 +
# snakemake-executor-plugin-slurm 2.8, recorded in the project's Slurm notes):
#   - Without slurmdbd `sacct` cannot answer, so the plugin must poll with `squeue`
#     (profile key slurm-status-command: squeue), and squeue only sees finished jobs for
#     MinJobAge seconds: keep it >= 3 x slurm-init-seconds-before-status-checks, or the plugin
#     silently falls back to sacct and waits forever.
#   - A GPU GRES needs a File= that exists, else slurmd reports 0 GPUs and the node goes INVAL.
#   - The node announces 95 % of its memory so it is never drained for "Low RealMemory".
#   - Without systemd nobody creates /run/munge; the daemons are started by hand and stopped by PID.
set -euo pipefail

ACTION=${1:-start}
BASE=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
INSTALL=${SLURM_LOCAL_INSTALL:-auto}
WAIT_S=${SLURM_LOCAL_WAIT:-60}
MIN_JOB_AGE=${SLURM_LOCAL_MIN_JOB_AGE:-600}
FAKE_GPU=${SLURM_LOCAL_FAKE_GPU:-0}
NODE_CPUS=${SLURM_LOCAL_CPUS:-}
NODE_MEM=${SLURM_LOCAL_MEMORY_MB:-}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by tbps scripts/slurm-local.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "[slurm-local] $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$BASE/run/$1.pid" ] && cat "$BASE/run/$1.pid" || true; }
node_state() { sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -n1 || true; }

log_tails() {
  local f
  for f in "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log"; do
    [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}

for knob in "SLURM_LOCAL_FAKE_GPU=$FAKE_GPU" "SLURM_LOCAL_CPUS=${NODE_CPUS:-1}" "SLURM_LOCAL_MEMORY_MB=${NODE_MEM:-1}"; do
  case "${knob#*=}" in ''|*[!0-9]*) fail "${knob%%=*} must be a whole number, got '${knob#*=}'" ;; esac
done
[ "$(id -u)" -eq 0 ] || fail "run as root (sudo $0 $ACTION): slurmd starts jobs as their owners"

ensure_packages() {
  local missing=0 cmd
  for cmd in slurmctld slurmd sbatch squeue munged; do command -v "$cmd" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return 0
  [ "$INSTALL" = auto ] || fail "Slurm/munge are not installed and SLURM_LOCAL_INSTALL=$INSTALL;" \
    "install them with: apt-get install --no-install-recommends ${PACKAGES[*]}"
  command -v apt-get >/dev/null || fail "Slurm/munge are not installed and there is no apt-get;" \
    "install ${PACKAGES[*]} with the system's package manager"
  say "installing ${PACKAGES[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    say "a munged is already answering (systemd or someone else): using it, will not stop it"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then   # the Debian package normally creates it
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge       # systemd's RuntimeDirectory= would do this
  [ -d /var/lib/munge ] || install -d -o munge -g munge -m 0711 /var/lib/munge
  [ -d /var/log/munge ] || install -d -o munge -g munge -m 0700 /var/log/munge
  runuser -u munge -- /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged --force
  local _
  for _ in $(seq 50); do munge_works && break; sleep 0.1; done
  munge_works || fail "munged does not answer (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$BASE/run/munged.pid"   # recorded = ours to stop
}

write_config() {
  local host hw mem cpus gres_line="" node_gres="" overrides=""
  host=$(hostname -s)
  hw=$(slurmd -C | head -n1)   # NodeName=... CPUs=... RealMemory=...
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  if [ -n "$NODE_CPUS$NODE_MEM" ]; then
    # Announce a bigger node than the machine: slurmd must then trust slurm.conf.
    hw="NodeName=$host CPUs=${NODE_CPUS:-$cpus} RealMemory=${NODE_MEM:-$((mem * 95 / 100))}"
    overrides="SlurmdParameters=config_overrides"
  else
    hw=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$hw")
  fi
  mkdir -p /etc/slurm
  # Keep a configuration we did not write, and put it back on stop.
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ ! -f "$CONF.tbps-orig" ]; then
    say "saving the existing $CONF as $CONF.tbps-orig"
    cp -p "$CONF" "$CONF.tbps-orig"
  fi
  if [ "$FAKE_GPU" -gt 0 ]; then
    # slurmd counts the File= entries and wants each to be a device node: one copy of
    # /dev/null (char 1:3) per fake GPU; a single GPU can use /dev/null itself.
    mkdir -p "$BASE/fake-gpu"
    local i files=()
    for i in $(seq 0 $((FAKE_GPU - 1))); do
      if mknod "$BASE/fake-gpu/gpu$i" c 1 3 2>/dev/null; then files+=("$BASE/fake-gpu/gpu$i")
      elif [ "$FAKE_GPU" = 1 ]; then files=(/dev/null)
      else fail "mknod is not permitted here: only SLURM_LOCAL_FAKE_GPU=1 (backed by /dev/null) works"; fi
    done
    {
      echo "$MARK"
      for i in "${files[@]}"; do echo "NodeName=$host Name=gpu File=$i"; done
    } >"$GRES_CONF"
    gres_line="GresTypes=gpu"
    node_gres=" Gres=gpu:$FAKE_GPU"
  elif [ -f "$GRES_CONF" ] && grep -qF "$MARK" "$GRES_CONF"; then
    rm -f "$GRES_CONF"
  fi
  cat >"$CONF" <<EOF
$MARK: a one-node test cluster, not for production
ClusterName=tbpslocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CPUs are the consumable; --mem is only checked against the node's RealMemory
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
# squeue (the plugin's status command here) sees finished jobs for this long
MinJobAge=$MIN_JOB_AGE
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no slurmdbd: accounting stays at its default (none); finished jobs are also logged here
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
$overrides
$gres_line
$hw$node_gres NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 0644 "$CONF"
}

wait_for_node() {
  local st="" _ host
  host=$(hostname -s)
  for _ in $(seq $((WAIT_S * 2))); do
    st=$(node_state)
    case "$st" in
      idle|mixed|allocated) return 0 ;;
      down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
      inval*) break ;;   # configuration does not match the hardware
    esac
    sleep 0.5
  done
  say "node state is '${st:-unknown}' after waiting up to ${WAIT_S}s"
  log_tails
  fail "the cluster did not come up"
}

do_start() {
  local t0=$SECONDS
  mkdir -p "$BASE/run" "$BASE/log"
  if alive "$(pid_of slurmctld)"; then
    say "already running (slurmctld pid $(pid_of slurmctld)); '$0 stop' first for a fresh cluster"
  else
    ensure_packages
    if [ "$(ps -p 1 -o comm= 2>/dev/null || true)" = systemd ]; then
      systemctl stop slurmctld slurmd 2>/dev/null || true   # units the packages may have started
    fi
    rm -rf "$BASE/state" "$BASE/spool" "$BASE/fake-gpu"     # a fresh cluster every time
    mkdir -p "$BASE/state" "$BASE/spool"
    : >"$BASE/log/slurmctld.log"; : >"$BASE/log/slurmd.log"
    start_munge
    write_config
    say "starting slurmctld and slurmd (node $(hostname -s), partition $PARTITION, fake GPUs $FAKE_GPU)"
    slurmctld   # both daemonise and write their PID files under $BASE/run
    slurmd
  fi
  wait_for_node
  sinfo -N -o '%N %P %T %c %m %G' >&2
  say "up in $((SECONDS - t0))s; logs in $BASE/log; stop with: $0 stop"
}

stop_daemon() {
  local name=$1 pid _
  pid=$(pid_of "$name")
  if alive "$pid"; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then say "$name still alive after 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$BASE/run/$name.pid"
}

do_stop() {
  local ids
  if alive "$(pid_of slurmctld)"; then
    ids=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$ids" ]; then
      say "cancelling jobs: $(tr '\n' ' ' <<<"$ids")"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      sleep 2   # let slurmstepd finish the cancelled steps
    fi
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
  stop_daemon munged   # only has a PID file when this script started it
  # Leave no configuration pointing at a stopped controller: with one, every `scontrol` (which
  # the Snakemake slurm plugin runs when it is imported, i.e. by every snakemake command) waits
  # about 10 s for an answer; without one it fails at once.
  if grep -qF "$MARK" "$CONF" 2>/dev/null; then
    if [ -f "$CONF.tbps-orig" ]; then
      say "restoring the saved $CONF"
      mv -f "$CONF.tbps-orig" "$CONF"
    else
      rm -f "$CONF"
    fi
  fi
  if grep -qF "$MARK" "$GRES_CONF" 2>/dev/null; then rm -f "$GRES_CONF"; fi
  say "stopped"
}

do_status() {
  local d pid up=1
  for d in munged slurmctld slurmd; do
    pid=$(pid_of "$d")
    if alive "$pid"; then echo "$d: running (pid $pid)"; else echo "$d: not running (or not started by this script)"; fi
  done
  alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)" || up=0
  sinfo -N -o '%N %P %T %c %m %G' 2>&1 || up=0
  [ "$up" = 1 ]
}

case "$ACTION" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) fail "usage: $0 start|stop|status" ;;
esac

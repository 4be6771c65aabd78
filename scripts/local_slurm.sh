#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for pneumolab's SLURM tests and for trying
# `pneumolab -m hydra/launcher=slurm` by hand. Debian/Ubuntu, as root.
#
#   scripts/local_slurm.sh start    install what is missing, start every daemon, wait until the node is idle
#   scripts/local_slurm.sh stop     stop every daemon this script started (by the PID in its pid file)
#   scripts/local_slurm.sh status   which daemons run, and sinfo
#
# Daemons: munged (authentication), mariadbd without a network port + slurmdbd
# (accounting: submitit reads a dead job's state from sacct, and without it waits forever
# for such a job), slurmctld and slurmd. Starting again while they run changes nothing.
set -euo pipefail

CLUSTER=pneumolab
PARTITION=cpu
CONF_DIR=/etc/slurm
PACKAGES=(munge slurm-wlm slurmdbd mariadb-server)
# Daemon name -> its pid file; stopped in the reverse order of starting.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PID_FILE=(
  [munged]=/run/munge/munged.pid
  [mariadbd]=/run/mysqld/mysqld.pid
  [slurmdbd]=/run/slurmdbd.pid
  [slurmctld]=/run/slurmctld.pid
  [slurmd]=/run/slurmd.pid
)

say() { echo "local_slurm: $*" >&2; }
die() { say "$*"; exit 1; }

running() {  # running DAEMON: its pid file names a live process
  local file=${PID_FILE[$1]} pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not happen within the time allowed"
    sleep 0.2
  done
}

install_packages() {
  local binary
  for binary in munged slurmctld slurmd slurmdbd mariadbd; do
    command -v "$binary" >/dev/null 2>&1 || break
  done
  command -v "$binary" >/dev/null 2>&1 && return  # all there: nothing to install
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it with"
  say "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists of a fresh machine may be missing or stale: update once and retry.
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
}

resolve_hostname() {
  local host
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/log/munge
  chmod 0600 /etc/munge/munge.key
  chmod 0711 /var/lib/munge
  chmod 0755 /run/munge
  running munged || runuser -u munge -- /usr/sbin/munged
  wait_for 10 "munge authentication" sh -c 'munge -n | unmunge'
}

start_mariadb() {
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  running mariadbd || setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking \
    --innodb-buffer-pool-size=64M --pid-file="${PID_FILE[mariadbd]}" >/var/log/mariadbd.log 2>&1
  wait_for 30 "MariaDB start" mariadb -e 'select 1'
}

write_configs() {
  local host node
  host=$(hostname -s)
  # The node as slurmd sees its hardware (CPUs, sockets, cores, threads, memory).
  node=$(slurmd -C | head -n 1)
  mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by pneumolab's scripts/local_slurm.sh: a one-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
# Pins each job to its CPUs: with task/none a 1-CPU job would still see every core.
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that asks for no memory takes the whole node: one job at a time.
DefMemPerCPU=1024
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${PID_FILE[slurmctld]}
SlurmdPidFile=${PID_FILE[slurmd]}
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  install -m 600 /dev/stdin "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=${PID_FILE[slurmdbd]}
LogFile=/var/log/slurm/slurmdbd.log
EOF
}

start_slurm() {
  running slurmdbd || slurmdbd
  wait_for 30 "slurmdbd start" sacctmgr -n list cluster
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  running slurmctld || slurmctld
  running slurmd || slurmd
  wait_for 30 "node registration" sh -c 'sinfo -h -o %T | grep -Eq "idle|down|mix|alloc"'
  if sinfo -h -o %T | grep -q down; then
    scontrol update nodename="$(hostname -s)" state=resume
  fi
  wait_for 30 "an idle node" sh -c 'sinfo -h -o %T | grep -Eq "idle|mix|alloc"'
}

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"
  install_packages
  resolve_hostname
  start_munge
  start_mariadb
  write_configs
  start_slurm
  say "up: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"
}

stop() {
  local daemon pid i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    daemon=${DAEMONS[i]}
    running "$daemon" || continue
    pid=$(cat "${PID_FILE[$daemon]}")
    kill "$pid"
    # Each daemon must be gone before the one it depends on stops.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $daemon ($pid)"
  done
}

status() {
  local daemon
  for daemon in "${DAEMONS[@]}"; do
    if running "$daemon"; then echo "$daemon: running ($(cat "${PID_FILE[$daemon]}"))"; else echo "$daemon: stopped"; fi
  done
  running slurmctld && sinfo
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac

#!/usr/bin/env bash
# Multi-node SLURM cluster on localhost (several slurmd, one per node name, each on its own port), with real accounting (slurmdbd + MariaDB), for trying clmerge's
# SLURM mode on a workstation and for CI integration tests.
#
#   slurm/dev-cluster.sh start    install what is missing (Debian/Ubuntu apt), configure, start, wait until usable
#   slurm/dev-cluster.sh status   which daemons run + sinfo; exit 0 only if everything is up
#   slurm/dev-cluster.sh stop     cancel jobs, stop the daemons by their recorded PIDs (TERM, then KILL)
#   slurm/dev-cluster.sh env      print `export SLURM_CONF=...`   (use: eval "$(slurm/dev-cluster.sh env)")
#
# Everything (configs, logs, PID files, slurmctld state, MariaDB data) lives in one state directory:
#   CLMERGE_SLURM_DIR              state directory (default /tmp/clmerge-slurm); `rm -rf` it (after stop) to reset
#   CLMERGE_SLURM_START_TIMEOUT    seconds to wait for each daemon to become usable during start (default 60)
#   CLMERGE_SLURM_STOP_TIMEOUT     seconds between TERM and KILL during stop (default 20)
#   CLMERGE_SLURMCTLD_PORT / CLMERGE_SLURMD_PORT / CLMERGE_SLURMDBD_PORT / CLMERGE_SLURM_MYSQL_PORT
#                                  TCP ports (defaults 6817 / 6818 / 6819 / 13306); change them if another
#                                  SLURM or MariaDB already uses them on this machine. Node i's slurmd listens on
#                                  CLMERGE_SLURMD_PORT + 10 * (i - 1) (6818, 6828, ...).
#   CLMERGE_SLURM_NODES            number of nodes, n1..nN, one slurmd each (default 2)
#   CLMERGE_SLURM_MAX_ARRAY_SIZE   MaxArraySize (default 101: small enough that tests split grids into arrays)
#   CLMERGE_SLURM_MAX_SUBMIT       the user's MaxSubmitJobs association limit (default 150; jobs + array elements
#                                  pending or running at once; sbatch rejects a submission beyond it)
#   CLMERGE_SLURMD_TIMEOUT         seconds without an answer before a node is marked DOWN and its jobs requeued
#                                  (default 30)
#
# No systemd is needed: every daemon runs in the foreground (-D) under setsid, in the background of this script,
# with its log in <dir>/log/<daemon>.log (+ <daemon>.console.log: stdout/stderr) and its PID in <dir>/run/<daemon>.pid.
#
# SECURITY: this uses AuthType=auth/none (no munge): SLURM trusts whatever uid a client claims. The daemons bind
# to 127.0.0.1 only (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny; MariaDB --bind-address), so nothing is
# reachable from the network, but ANY LOCAL USER can run jobs as the user running the daemons. Fine on a CI VM or a
# single-user workstation; on a shared machine run `start` as your own (non-root) user -- that works too once the
# packages are installed -- never as root. A development cluster, not a production setup.
set -euo pipefail

# Daemons and the MariaDB tools live in /usr/sbin, which a non-root user's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

STATE_DIR="$(realpath -m "${CLMERGE_SLURM_DIR:-/tmp/clmerge-slurm}")"
START_TIMEOUT="${CLMERGE_SLURM_START_TIMEOUT:-60}"
STOP_TIMEOUT="${CLMERGE_SLURM_STOP_TIMEOUT:-20}"
SLURMCTLD_PORT="${CLMERGE_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${CLMERGE_SLURMD_PORT:-6818}"
SLURMDBD_PORT="${CLMERGE_SLURMDBD_PORT:-6819}"
NODE_COUNT="${CLMERGE_SLURM_NODES:-2}"
MAX_ARRAY_SIZE="${CLMERGE_SLURM_MAX_ARRAY_SIZE:-101}"
MAX_SUBMIT="${CLMERGE_SLURM_MAX_SUBMIT:-150}"
SLURMD_TIMEOUT="${CLMERGE_SLURMD_TIMEOUT:-30}"
# Not MariaDB's default 3306, so that a MariaDB/MySQL already running on this machine does not collide with ours.
MYSQL_PORT="${CLMERGE_SLURM_MYSQL_PORT:-13306}"

CLUSTER_NAME="clmerge"   # also a table-name prefix in the accounting DB: keep it [a-z0-9_]
CTLD_HOST="localhost"
[[ "$NODE_COUNT" =~ ^[1-9][0-9]?$ ]] || { echo "[dev-cluster] ERROR: CLMERGE_SLURM_NODES must be 1..99, got '$NODE_COUNT'" >&2; exit 1; }
NODES=()
for ((i = 1; i <= NODE_COUNT; i++)); do NODES+=("n$i"); done
node_port() { echo $((SLURMD_PORT + 10 * (${1#n} - 1))); }
ACCOUNT="clmerge"
PARTITION="debug"

CONF="$STATE_DIR/slurm.conf"
DBD_CONF="$STATE_DIR/slurmdbd.conf"   # slurmdbd only looks for slurmdbd.conf in the directory of $SLURM_CONF
LOG_DIR="$STATE_DIR/log"
RUN_DIR="$STATE_DIR/run"
MYSQL_DIR="$STATE_DIR/mysql"
MYSQL_SOCK="$RUN_DIR/mysqld.sock"
DB_PASS_FILE="$STATE_DIR/db-password"

RUN_USER="$(id -un)"
# Start order; stop goes in reverse. A name up to its first '-' is the daemon's /proc/PID/comm (slurmd-n2 is a
# slurmd), which is checked before any signal is sent, so a stale PID file that now points at an unrelated process
# is never acted upon.
DAEMONS=(mariadbd slurmdbd slurmctld)
for n in "${NODES[@]}"; do DAEMONS+=("slurmd-$n"); done

export SLURM_CONF="$CONF"   # for every slurm client this script runs (sinfo, sacctmgr, squeue, scancel)

# ----------------------------------------------------------------------------------------------------------------
# helpers

msg() { printf '[dev-cluster] %s\n' "$*" >&2; }
die() { printf '[dev-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $0 {start|stop|status|env|kill-node NODE|start-node NODE|stop-controller|start-controller}
  start   install missing packages (apt), configure and start slurmdbd+MariaDB, slurmctld, slurmd on localhost
  stop    cancel remaining jobs and stop all daemons started by 'start'
  status  show which daemons run and sinfo; exit status 0 only if all are up
  env     print the line to eval: export SLURM_CONF=$CONF
  kill-node NODE       fault: KILL node NODE's slurmd and its jobs' processes (the controller notices later)
  start-node NODE      start node NODE's slurmd again and wait until the node is usable
  stop-controller      stop slurmctld only (it saves its state); jobs keep running on the nodes
  start-controller     start slurmctld again from its saved state
state directory: $STATE_DIR (set CLMERGE_SLURM_DIR to change)
EOF
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# Prints the PID of daemon $1 and returns 0 if it runs, i.e. its PID file names a live process with the right comm.
daemon_pid() {
    local name="$1" f pid comm
    f="$(pid_file "$name")"
    [[ -r "$f" ]] || return 1
    pid="$(<"$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "${name%%-*}" ]] || return 1
    # A zombie (exited, not yet reaped) is not running.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]] || return 1
    echo "$pid"
}

is_running() { daemon_pid "$1" >/dev/null; }

already_running() {   # for start: says so if daemon $1 runs
    local pid
    pid="$(daemon_pid "$1")" || return 1
    msg "$1 already running (pid $pid)"
}

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do is_running "$d" || return 1; done
}

log_tails() {
    local d f
    local names=("${DAEMONS[@]}")
    is_running mariadbd || names=(mariadb-install-db "${names[@]}")
    for d in "${names[@]}"; do
        for f in "$LOG_DIR/$d.log" "$LOG_DIR/$d.console.log"; do
            [[ -s "$f" ]] || continue
            printf '\n----- last 20 lines of %s -----\n' "$f" >&2
            tail -n 20 "$f" >&2
        done
    done
    printf '\n' >&2
}

fail_start() {
    printf '[dev-cluster] ERROR: %s\n' "$*" >&2
    log_tails
    msg "daemons that did start are left running for inspection; '$0 stop' stops them"
    exit 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_port_free() {   # $1 daemon, $2 port, $3 name of the env var that changes it
    if port_in_use "$2"; then
        die "port $2 (for $1) is already in use on 127.0.0.1 -- another SLURM or MariaDB? Stop it, or set $3 to a free port"
    fi
}

# Starts daemon $1 with command "${@:2}": foreground mode, own session (setsid, so that a Ctrl-C or the end of a CI
# step's process group does not kill it), stdin closed, PID recorded. Each daemon writes its own log file
# (<name>.log, configured below); its stdout/stderr go to <name>.console.log: in -D mode SLURM daemons echo every log
# line there too (without timestamps), and messages from before the log file is opened (bad config) only go there.
launch() {
    local name="$1"; shift
    printf '\n===== %s: starting %s =====\n' "$(date '+%F %T')" "$*" >>"$LOG_DIR/$name.console.log"
    # In a non-interactive shell a background job is not a process-group leader, so setsid calls setsid(2) and
    # execs the daemon in place: $! is the daemon's own PID.
    setsid "$@" </dev/null >>"$LOG_DIR/$name.console.log" 2>&1 &
    local pid=$! i
    echo "$pid" >"$(pid_file "$name")"
    # Until the fork has exec'd the daemon, /proc/PID/comm still names this script (or setsid), and is_running
    # would call it dead: wait for the exec.
    for ((i = 0; i < 100; i++)); do
        is_running "$name" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    is_running "$name" || fail_start "$name exited right after it was started"
}

# wait_for DESCRIPTION DAEMON COMMAND...: retries COMMAND every 0.5 s until it succeeds, the daemon dies, or the timeout.
wait_for() {
    local what="$1" daemon="$2"; shift 2
    local deadline=$((SECONDS + START_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        is_running "$daemon" || fail_start "$daemon exited while waiting for $what"
        ((SECONDS < deadline)) || fail_start "timed out after ${START_TIMEOUT}s waiting for $what"
        sleep 0.5
    done
}

mysql_admin() {   # SQL as the DB superuser: via the socket, with unix_socket authentication as the current OS user
    mariadb --no-defaults --socket="$MYSQL_SOCK" --user="$RUN_USER" --batch --skip-column-names "$@"
}

# ----------------------------------------------------------------------------------------------------------------
# installation

have_binaries() {
    local b
    for b in slurmctld slurmd slurmdbd sinfo sbatch squeue scancel sacct sacctmgr \
             mariadbd mariadb-install-db mariadb mariadb-admin; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    have_binaries && return 0
    command -v apt-get >/dev/null 2>&1 || die "SLURM/MariaDB binaries are missing and apt-get is not available: install slurm-wlm, slurmdbd and mariadb-server (SLURM >= 22.05) by hand"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "SLURM/MariaDB binaries are missing; run as root, or: sudo apt-get install -y slurm-wlm slurmdbd mariadb-server"
        sudo=(sudo)
    fi
    msg "installing slurm-wlm slurmdbd mariadb-server with apt-get (binaries missing) ..."
    local t0=$SECONDS
    # The packages' maintainer scripts would start the *system* services (slurmctld, slurmd, munge, mariadb, with
    # /etc configs) -- not wanted: this script runs its own instances. A policy-rc.d that exits 101 forbids
    # service starts (honoured by invoke-rc.d and deb-systemd-invoke). Only installed if none exists, removed after.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# temporary, from clmerge slurm/dev-cluster.sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
        # shellcheck disable=SC2064  # expand now: the variables are local
        trap "${sudo[*]} rm -f '$policy'" EXIT   # also when apt-get is interrupted
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local rc=0
    # Fresh containers often have no package lists: update first then; otherwise only if the first attempt fails.
    if ! compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null; then
        "${sudo[@]}" apt-get -q update || rc=$?
    fi
    if ((rc == 0)) && ! "${apt[@]}" install slurm-wlm slurmdbd mariadb-server; then
        msg "apt-get install failed; retrying after apt-get update"
        "${sudo[@]}" apt-get -q update && "${apt[@]}" install slurm-wlm slurmdbd mariadb-server || rc=$?
    fi
    if ((own_policy)); then "${sudo[@]}" rm -f "$policy"; trap - EXIT; fi
    ((rc == 0)) || die "apt-get failed (exit $rc)"
    have_binaries || die "packages installed but some binaries are still missing (need slurmctld slurmd slurmdbd sinfo sbatch sacct sacctmgr mariadbd mariadb-install-db mariadb mariadb-admin)"
    msg "installed in $((SECONDS - t0)) s"
}

# ----------------------------------------------------------------------------------------------------------------
# configuration

write_configs() {
    local cpus mem_mb tmp
    cpus="$(nproc)"
    # Each node claims all CPUs and 85 % of physical memory divided among the nodes: they share this machine
    # (oversubscribed CPUs, as a test cluster may be); the OS, MariaDB and the daemons need some headroom.
    mem_mb="$(awk -v n="$NODE_COUNT" '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85 / n}' /proc/meminfo)"

    tmp="$(mktemp "$STATE_DIR/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Generated by clmerge slurm/dev-cluster.sh -- rewritten on every start; edits are lost.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$CTLD_HOST
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
# Daemons run as the user who started them (root in CI); no separate 'slurm' system user is needed.
SlurmUser=$RUN_USER
SlurmdUser=$RUN_USER
# No munge daemon/key to manage. auth/none trusts the claimed uid: dev/CI only (see the header of the script).
AuthType=auth/none
CredType=cred/none
# Default cred_expire is 120 s, and a requeued job (preemption, USR2 checkpoint in submitit) is held that long
# before it may run again.
AuthInfo=cred_expire=10
# Bind to the configured addresses (127.0.0.1) instead of 0.0.0.0, so the cluster is not reachable from outside:
# NoCtldInAddrAny for slurmctld, NoInAddrAny for slurmd/srun (one does not imply the other).
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MpiDefault=none
MailProg=/bin/true
# No cgroups needed (containers, CI VMs without cgroup delegation).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Sampled from /proc: gives sacct MaxRSS/CPU figures, enforces nothing.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTLD_HOST
AccountingStoragePort=$SLURMDBD_PORT
# Jobs need an association (user $RUN_USER in account $ACCOUNT, made by start) and its limits hold: MaxSubmitJobs.
AccountingStorageEnforce=associations,limits,qos
# Small on purpose: a grid larger than this must be split into several arrays (a real site's default is 1001).
MaxArraySize=$MAX_ARRAY_SIZE
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Defaults (bf_interval=30, sched_interval=60) add 30-60 s of latency to arrays and requeues.
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that asks for no memory gets the whole node's and jobs run one at a time.
DefMemPerCPU=1024
# A node that went DOWN (e.g. slurmd restarted) returns to service as soon as it registers again.
ReturnToService=2
KillWait=5
# Keep finished jobs in slurmctld's memory for 10 min (scontrol show job); sacct has them for good anyway.
MinJobAge=600
InactiveLimit=0
# A node that does not answer for this long is DOWN and its jobs are requeued (fault tests kill a slurmd).
SlurmdTimeout=$SLURMD_TIMEOUT
# Several slurmd on one machine announce the configured CPUs/memory, not what each detects (they share it).
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR/state/slurmctld
# %n: the node's name, so that each slurmd has its own spool, PID file and log
SlurmdSpoolDir=$STATE_DIR/state/slurmd-%n
SlurmctldPidFile=$RUN_DIR/slurmctld.daemon.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.daemon.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
$(for n in "${NODES[@]}"; do
    echo "NodeName=$n NodeHostname=$CTLD_HOST NodeAddr=127.0.0.1 Port=$(node_port "$n") CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
done)
PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"

    # The DB password: random, made once, kept in the state dir (mode 600) so MariaDB and slurmdbd.conf agree.
    if [[ ! -s "$DB_PASS_FILE" ]]; then
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
    fi
    tmp="$(mktemp "$STATE_DIR/.slurmdbd.conf.XXXXXX")"   # mktemp: mode 600 from the start (it holds a password)
    cat >"$tmp" <<EOF
# Generated by clmerge slurm/dev-cluster.sh -- rewritten on every start; edits are lost.
# slurmdbd refuses to start unless this file is owned by SlurmUser with mode 600.
AuthType=auth/none
DbdHost=$CTLD_HOST
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=$RUN_USER
CommunicationParameters=NoInAddrAny
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.daemon.pid
StorageType=accounting_storage/mysql
# TCP: slurmdbd has no option for a socket path, and our MariaDB's socket is not at the compiled-in default.
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$(<"$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$tmp"
    mv -f "$tmp" "$DBD_CONF"
}

# ----------------------------------------------------------------------------------------------------------------
# start

start_mariadb() {
    already_running mariadbd && return 0
    msg "starting mariadbd (port $MYSQL_PORT)"
    if [[ ! -d "$MYSQL_DIR/mysql" ]]; then
        msg "initialising MariaDB data directory $MYSQL_DIR"
        rm -rf "$MYSQL_DIR"
        # --no-defaults everywhere: ignore /etc/mysql/*.cnf (which points socket/pid at /run/mysqld, the system
        # instance's). Accounts root@localhost and $RUN_USER@localhost are created with unix_socket authentication
        # (no password, only reachable through our socket by that OS user).
        mariadb-install-db --no-defaults --datadir="$MYSQL_DIR" --user="$RUN_USER" \
            --auth-root-authentication-method=socket --skip-test-db >>"$LOG_DIR/mariadb-install-db.log" 2>&1 \
            || fail_start "mariadb-install-db failed"
    fi
    local as_root=()
    [[ "$(id -u)" == 0 ]] && as_root=(--user=root)   # mariadbd refuses to run as root without this
    launch mariadbd mariadbd --no-defaults "${as_root[@]}" --datadir="$MYSQL_DIR" --socket="$MYSQL_SOCK" \
        --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$RUN_DIR/mariadbd.daemon.pid" \
        --log-error="$LOG_DIR/mariadbd.log" --innodb-lock-wait-timeout=900
    # (innodb_lock_wait_timeout=900 is what SLURM's accounting docs ask for: long rollups must not time out.)
    wait_for "MariaDB to accept connections" mariadbd mysql_admin -e 'SELECT 1'
}

setup_database() {
    local pass
    pass="$(<"$DB_PASS_FILE")"
    # TCP connections from 127.0.0.1 with --skip-name-resolve match host '127.0.0.1', not 'localhost': create both.
    # ALTER USER keeps the password in sync if the password file was recreated.
    mysql_admin <<EOF || fail_start "creating the slurm DB user / slurm_acct_db failed"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

sacctmgr_ok() { sacctmgr -n -P show cluster format=cluster; }
cluster_registered() { sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; }

start_slurmdbd() {
    already_running slurmdbd && return 0
    msg "starting slurmdbd (port $SLURMDBD_PORT)"
    launch slurmdbd slurmdbd -D
    # First start creates the accounting tables (a few seconds).
    wait_for "slurmdbd to answer sacctmgr" slurmdbd sacctmgr_ok
    # slurmctld registers its cluster itself on first contact; adding it here first makes that deterministic and
    # also covers a DB that was reset underneath an existing slurmctld state.
    if ! cluster_registered; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >>"$LOG_DIR/slurmdbd.log" 2>&1 \
            || fail_start "sacctmgr add cluster $CLUSTER_NAME failed"
    fi
}

start_slurmctld() {
    already_running slurmctld && return 0
    msg "starting slurmctld (port $SLURMCTLD_PORT)"
    # Without -c: job/node state in StateSaveLocation survives stop/start, like a real controller restart.
    launch slurmctld slurmctld -D -f "$CONF"
    wait_for "slurmctld to answer" slurmctld scontrol ping
}

# The account every job of $RUN_USER runs under, with the per-user submission limit (MaxSubmitJobs): jobs and
# array elements pending or running at once. Idempotent: `add` of what exists fails harmlessly; `modify` resets.
setup_association() {
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER_NAME" >>"$LOG_DIR/slurmdbd.log" 2>&1 || true
    sacctmgr -i add user "$RUN_USER" account="$ACCOUNT" cluster="$CLUSTER_NAME" defaultaccount="$ACCOUNT" \
        >>"$LOG_DIR/slurmdbd.log" 2>&1 || true
    sacctmgr -i modify user where name="$RUN_USER" cluster="$CLUSTER_NAME" set maxsubmitjobs="$MAX_SUBMIT" \
        >>"$LOG_DIR/slurmdbd.log" 2>&1 || true
    [[ "$(sacctmgr -n -P show assoc where user="$RUN_USER" cluster="$CLUSTER_NAME" format=maxsubmit 2>/dev/null | head -n1)" == "$MAX_SUBMIT" ]] \
        || fail_start "could not give user $RUN_USER an association with MaxSubmitJobs=$MAX_SUBMIT (sacctmgr)"
}

# Job ids (raw, one per array element) that have a live slurmstepd of this cluster on node $1: its command line
# reads "slurmstepd: [JOBID.STEP]".
live_step_jobs() {
    local p comm
    for p in /proc/[0-9]*; do
        comm="$(cat "$p/comm" 2>/dev/null)" || continue
        [[ "$comm" == slurmstepd ]] || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "CLMERGE_DEV_NODE=$1" || continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | sed -n 's/.*\[\([0-9]*\)\..*/\1/p'
    done | sort -u
}

# Phantom jobs: slurmctld lists them running on node $1, but no process of theirs is left there (the node's slurmd
# and job steps were killed while slurmctld could not hear of it, e.g. `stop` while the controller was down).
# On a real cluster the node reboots and slurmctld sees the new boot time and fails them (NODE_FAIL); here the
# machine did not reboot, so slurmctld would list them as running for ever, holding the node's CPUs. Requeue them
# as a node failure would (a requeued clmerge cell resumes from its checkpoint), or cancel those that refuse.
# Only jobs that started before $2 (epoch seconds: when this slurmd was launched) are candidates, so that a job
# starting right now, whose slurmstepd is not there yet, is left alone.
requeue_phantom_jobs() {
    local node="$1" since="$2" live job start
    live=" $(live_step_jobs "$node" | tr '\n' ' ') "
    while read -r job start; do
        [[ -n "$job" ]] || continue
        [[ "$live" == *" $job "* ]] && continue
        (($(date -d "$start" +%s 2>/dev/null || echo "$since") < since)) || continue
        msg "job $job is listed as running on $node but none of its processes is left there: requeueing it"
        scontrol requeue "$job" 2>/dev/null || scancel "$job" 2>/dev/null || true
    done < <(squeue -h -w "$node" -t R,CG -o '%A %S' 2>/dev/null)
}

# Node $1's slurmd. -N: the node name in slurm.conf (its port and spool follow from it). CLMERGE_DEV_NODE marks
# its processes, and the slurmstepd it forks inherit it: `kill-node` finds that node's jobs by it.
start_slurmd() {
    local node="$1"
    already_running "slurmd-$node" && return 0
    msg "starting slurmd for node $node (port $(node_port "$node"))"
    date +%s >"$RUN_DIR/slurmd-$node.started"
    launch "slurmd-$node" env CLMERGE_DEV_NODE="$node" slurmd -D -N "$node" -f "$CONF"
}

# After (re)starting: no job may stay "running" on a node without its processes.
requeue_all_phantoms() {
    local n
    for n in "${NODES[@]}"; do
        [[ -s "$RUN_DIR/slurmd-$n.started" ]] && requeue_phantom_jobs "$n" "$(<"$RUN_DIR/slurmd-$n.started")"
    done
    return 0
}

node_usable() {   # $1: node name
    local st
    st="$(sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1)" || return 1
    # '*' suffix = not responding. idle is the normal case; mixed/allocated when jobs from before a restart run.
    [[ "$st" =~ ^(idle|mixed|allocated|completing)$ ]]
}

all_nodes_usable() {
    local n
    for n in "${NODES[@]}"; do node_usable "$n" || return 1; done
}

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}'; }

cmd_start() {
    local t0=$EPOCHREALTIME
    if all_running; then
        msg "already running (state dir $STATE_DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    # slurm.conf cannot quote paths, and a unix socket path is limited to 107 bytes.
    [[ "$STATE_DIR" =~ [[:space:]] ]] && die "the state directory must not contain whitespace: '$STATE_DIR' (set CLMERGE_SLURM_DIR)"
    ((${#MYSQL_SOCK} <= 100)) || die "state directory path too long for MariaDB's socket ($MYSQL_SOCK); set CLMERGE_SLURM_DIR to a shorter path"
    install_packages
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/state/slurmctld"
    local n
    for n in "${NODES[@]}"; do mkdir -p "$STATE_DIR/state/slurmd-$n"; done
    # Check all ports first, so that a conflict does not leave half a cluster running.
    is_running mariadbd  || check_port_free MariaDB   "$MYSQL_PORT"     CLMERGE_SLURM_MYSQL_PORT
    is_running slurmdbd  || check_port_free slurmdbd  "$SLURMDBD_PORT"  CLMERGE_SLURMDBD_PORT
    is_running slurmctld || check_port_free slurmctld "$SLURMCTLD_PORT" CLMERGE_SLURMCTLD_PORT
    for n in "${NODES[@]}"; do
        is_running "slurmd-$n" || check_port_free "slurmd-$n" "$(node_port "$n")" CLMERGE_SLURMD_PORT
    done
    write_configs
    local t_cfg=$EPOCHREALTIME
    start_mariadb
    setup_database
    start_slurmdbd
    setup_association
    start_slurmctld
    for n in "${NODES[@]}"; do start_slurmd "$n"; done
    wait_for "nodes ${NODES[*]} to be idle in sinfo" slurmctld all_nodes_usable
    all_running || fail_start "a daemon exited during start"
    requeue_all_phantoms
    cluster_registered || fail_start "cluster $CLUSTER_NAME is not registered in accounting (sacctmgr)"
    msg "cluster '$CLUSTER_NAME' up in $(elapsed "$t0") s ($(elapsed "$t_cfg") s after installation/configuration); state and logs in $STATE_DIR"
    sinfo >&2 || true
    msg "to use it from a shell:"
    echo "export SLURM_CONF=$CONF"
}

# ----------------------------------------------------------------------------------------------------------------
# stop

# All descendants of PID $1, from one ps snapshot.
descendants() {
    ps -e -o pid= -o ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            want[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in parent) if (!(p in want) && (parent[p] in want)) { want[p] = 1; changed = 1 } }
            for (p in want) if (p != root) print p
        }'
}

stop_daemon() {
    local name="$1" pid deadline
    if ! pid="$(daemon_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    msg "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while is_running "$name" && ((SECONDS < deadline)); do sleep 0.2; done
    if is_running "$name"; then
        msg "$name did not exit within ${STOP_TIMEOUT}s of SIGTERM: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pid_file "$name")"
}

# slurmstepd (one per job step, forked by slurmd) outlives slurmd. Ours are recognised by name *and* by carrying
# this cluster's SLURM_CONF in their environment (inherited from the slurmd we started).
# $1 (optional): only those of that node (CLMERGE_DEV_NODE in their environment).
kill_leftover_steps() {
    local p comm pids=() node="${1:-}"
    for p in /proc/[0-9]*; do
        comm="$(cat "$p/comm" 2>/dev/null)" || continue
        [[ "$comm" == slurmstepd ]] || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" || continue
        [[ -z "$node" ]] || tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "CLMERGE_DEV_NODE=$node" || continue
        pids+=("${p#/proc/}")
    done
    ((${#pids[@]})) || return 0
    local all=() q
    for p in "${pids[@]}"; do all+=("$p"); while read -r q; do all+=("$q"); done < <(descendants "$p"); done
    msg "killing ${#pids[@]} leftover slurmstepd process tree(s): ${all[*]}"
    kill -KILL "${all[@]}" 2>/dev/null || true
}

cmd_stop() {
    local any=0 d
    for d in "${DAEMONS[@]}"; do is_running "$d" && any=1; done
    if ((any == 0)); then
        msg "not running (state dir $STATE_DIR)"
        kill_leftover_steps
        return 0
    fi
    # Cancel what is still queued/running while the controller is up, so the jobs end as CANCELLED in sacct instead
    # of lingering as orphan processes (slurmstepd survives slurmd) or as NODE_FAIL on the next start.
    if is_running slurmctld && scontrol ping >/dev/null 2>&1; then
        local jobs
        jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')" || jobs=""
        if [[ -n "${jobs// /}" ]]; then
            msg "cancelling jobs still in the queue: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + 15))
            while [[ -n "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
    kill_leftover_steps
    msg "stopped (state kept in $STATE_DIR; remove it to start from scratch)"
}

# ----------------------------------------------------------------------------------------------------------------
# faults, for tests: a node that dies, a controller that restarts

check_node() { [[ " ${NODES[*]} " == *" $1 "* ]] || die "no node '$1' (nodes: ${NODES[*]})"; }

# A node's power cut: its slurmd and every job process on it are KILLed at once, nothing is told to the controller,
# which notices after SlurmdTimeout, marks the node DOWN and requeues its jobs.
cmd_kill_node() {
    local node="$1" pid
    check_node "$node"
    if pid="$(daemon_pid "slurmd-$node")"; then
        msg "killing node $node: slurmd (pid $pid) and its job steps"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    kill_leftover_steps "$node"
    rm -f "$(pid_file "slurmd-$node")"
}

cmd_start_node() {
    check_node "$1"
    start_slurmd "$1"
    wait_for "node $1 to be usable in sinfo" "slurmd-$1" node_usable "$1"
    requeue_phantom_jobs "$1" "$(<"$RUN_DIR/slurmd-$1.started")"
}

# slurmctld stopped (TERM: it saves its state) and started again from that state, jobs left running meanwhile.
cmd_stop_controller() { stop_daemon slurmctld; }
cmd_start_controller() { start_slurmctld; }

# ----------------------------------------------------------------------------------------------------------------
# status

cmd_status() {
    local ok=0 d pid
    echo "state dir: $STATE_DIR"
    for d in "${DAEMONS[@]}"; do
        if pid="$(daemon_pid "$d")"; then
            printf '  %-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '  %-10s NOT running\n' "$d"; ok=1
        fi
    done
    if is_running slurmctld; then
        sinfo || ok=1
        local n
        for n in "${NODES[@]}"; do node_usable "$n" || { echo "node $n is not usable (see sinfo -R)"; ok=1; }; done
    fi
    if is_running slurmdbd; then
        cluster_registered || { echo "accounting: cluster $CLUSTER_NAME not registered / sacctmgr fails"; ok=1; }
    fi
    if ((ok == 0)); then echo "all up; use: export SLURM_CONF=$CONF"; else echo "NOT all up"; fi
    return "$ok"
}

# ----------------------------------------------------------------------------------------------------------------

case "${1:-}" in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    env)    echo "export SLURM_CONF=$CONF" ;;
    kill-node)  [[ $# == 2 ]] || { usage; exit 2; }; cmd_kill_node "$2" ;;
    start-node) [[ $# == 2 ]] || { usage; exit 2; }; cmd_start_node "$2" ;;
    stop-controller)  cmd_stop_controller ;;
    start-controller) cmd_start_controller ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac

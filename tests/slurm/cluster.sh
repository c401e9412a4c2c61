#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests marked `slurm` (and for trying the
# templates by hand). No systemd: munged, slurmctld and slurmd are started by hand, with their
# state, logs, sockets and pid files in DIR, and stopped by the pids they wrote there.
#
#   tests/slurm/cluster.sh start DIR   # installs Debian's packages when missing; prints SLURM_CONF=...
#   export SLURM_CONF=DIR/slurm.conf   # then sbatch, srun, sinfo, squeue, scancel use it
#   tests/slurm/cluster.sh stop DIR    # stops exactly the daemons that `start DIR` started
#
# DIR must not exist yet or be empty; munged runs as the munge user, so DIR and its parents must be
# traversable by it (the pytest fixture makes DIR under /tmp with mode 0755).
# Exit codes of start: 0 up; 3 the packages cannot be installed; 1 a daemon failed (its log is shown).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
CPUS=${CSLR_SLURM_CPUS:-16}  # oversubscribed: the node offers more CPUs than the machine has

die() { echo "cluster.sh: $*" >&2; exit 1; }

install_packages() {
    local missing=0
    for program in slurmctld slurmd sbatch munged mungekey; do
        command -v "$program" >/dev/null || missing=1
    done
    [ "$missing" = 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    echo "cluster.sh: installing ${PACKAGES[*]} (apt-get)" >&2
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
            || { echo "cluster.sh: apt-get install ${PACKAGES[*]} failed" >&2; exit 3; }
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pid in FILE, only if that process is still the daemon we started (its command line names MARK)
our_pid() {
    local file=$1 mark=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc 0-9 < "$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$mark" || return 1
    echo "$pid"
}

show_logs() {
    for log in "$DIR"/log/*.log; do
        [ -f "$log" ] && { echo "---- $log" >&2; tail -n 30 "$log" >&2; }
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    show_logs
    bash "$0" stop "$DIR" >&2 || true
    die "timed out after ${seconds}s waiting for $what"
}

start() {
    install_packages
    [ -z "$(ls -A "$DIR" 2>/dev/null)" ] || die "$DIR is not empty"
    mkdir -p "$DIR"/{state,spool,log,munge}
    chmod 0755 "$DIR" "$DIR"/{state,spool,log}
    local host memory ctld_port slurmd_port
    host=$(hostname -s)
    # RealMemory: the default (1 MB) refuses any --mem; more than the machine has would drain the
    # node, except with config_overrides (below), and nothing enforces --mem here (no cgroups). So:
    # ~90% of what slurmd finds, but at least 64 GiB, so that the templates' real-cluster requests
    # (--mem=16G) run side by side
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    memory=$((memory * 9 / 10))
    [ "$memory" -ge 65536 ] || memory=65536
    memory=${CSLR_SLURM_MEMORY:-$memory}
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$(free_port)

    # munge: its own key and socket in DIR; munged refuses files and folders not owned by it
    chown munge:munge "$DIR/munge"
    chmod 0755 "$DIR/munge"  # the socket needs a folder everyone may enter
    runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 0600 "$DIR/munge/munge.key"
    runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || { tail -n 20 "$DIR/munge/munged.log" >&2 || true; die "munged did not start"; }
    # a copy of munged's pid beside the others, for `stop`
    wait_for 10 "munged's pid file" test -s "$DIR/munge/munged.pid"
    cp "$DIR/munge/munged.pid" "$DIR/munged.pid"

    cat > "$DIR/slurm.conf" <<EOF
# written by tests/slurm/cluster.sh: one node, state and logs in $DIR
ClusterName=cslr-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# schedule batch jobs when they come, not on a 3 s tick (the default batch_sched_delay is 3)
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
ReturnToService=2
MinJobAge=600
KillWait=5
# the node as configured here, not as found (CPUs=$CPUS on a smaller machine): more jobs at once
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -f "$SLURM_CONF" || { show_logs; bash "$0" stop "$DIR" || true; die "slurmctld did not start"; }
    wait_for 20 "slurmctld" scontrol ping
    slurmd -f "$SLURM_CONF" -N "$host" || { show_logs; bash "$0" stop "$DIR" || true; die "slurmd did not start"; }
    wait_for 30 "node $host to be idle" bash -c "sinfo -h -N -n '$host' -o %T | grep -qx idle"
    echo "export SLURM_CONF=$SLURM_CONF" > "$DIR/env.sh"
    echo "SLURM_CONF=$SLURM_CONF"
}

stop() {
    [ -d "$DIR" ] || return 0
    local pids=() pid
    # the Slurm daemons together, then munge (they use it while they shut down)
    for group in "slurmd.pid:$DIR/slurm.conf slurmctld.pid:$DIR/slurm.conf" "munged.pid:$DIR/munge/munge.socket"; do
        pids=()
        for entry in $group; do
            if pid=$(our_pid "$DIR/${entry%%:*}" "${entry#*:}"); then
                kill -TERM "$pid" 2>/dev/null || true
                pids+=("$pid")
            fi
        done
        for pid in "${pids[@]}"; do
            for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        done
    done
    rm -f "$DIR"/{slurmd,slurmctld,munged}.pid
}

[ $# -eq 2 ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
DIR=$(realpath -m "$2")
case $1 in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

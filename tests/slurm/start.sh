#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the job-array test (tests/slurm.rs): munged,
# slurmctld and slurmd from Debian's slurm-wlm and munge, configured for localhost with
# proctrack/linuxproc and task/none (no cgroups needed). Prints `export SLURM_CONF=...` for
# the commands to use it; everything (state, logs, spool) lives under the folder given.
# Usage: tests/slurm/start.sh DIR   (root, or a user who may run munged and slurmd)
set -euo pipefail
dir=$(realpath -m "${1:?usage: start.sh DIR}")
mkdir -p "$dir"/{state,spool,log,run}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
user=$(id -un)
cat >"$dir/slurm.conf" <<CONF
ClusterName=gputrain-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
: >"$dir/cgroup.conf"
export SLURM_CONF="$dir/slurm.conf"
# munged: Debian's package made a key; its socket folder may not exist on a fresh machine.
# A munged whose socket is gone (its package reinstalled under it) is no munged: start anew.
if ! munge -n </dev/null >/dev/null 2>&1; then
    pkill -x munged 2>/dev/null && sleep 0.5
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    if [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1; then
        runuser -u munge -- munged --force
    else
        munged --force
    fi
fi
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
# Ready when the node takes jobs (at most 30 s).
for _ in $(seq 1 60); do
    if timeout 5 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix)'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up; logs in $dir/log:" >&2
tail -n 20 "$dir"/log/*.log >&2 || true
exit 1

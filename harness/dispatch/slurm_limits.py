"""How much a SLURM cluster accepts from one submitter: the largest job array and the most jobs queued at once.

    max_array_size     elements per array. sbatch rejects an index >= MaxArraySize (`scontrol show config`;
                       SLURM's default 1001), so an array of indices 0..n-1 may have n = MaxArraySize elements.
    max_jobs_in_queue  jobs + array elements of this user pending or running at once: the smallest of the user's
                       association MaxSubmitJobs, the QOS's MaxSubmitJobsPerUser (`sacctmgr`, where accounting
                       answers) and the controller's MaxJobCount. sbatch rejects a whole array that would pass it.

Group limits are shared with other users, so they are a live room rather than a fixed cap: GrpSubmitJobs of the
user's association, of every account above it, and of the QOS, each minus the jobs already counted against it
(`scontrol show assoc_mgr`, which prints "limit(used)"): `shared_room`. Each submission wave takes the smaller of
that and the room under max_jobs_in_queue.

A profile may set either limit lower than the cluster's (`max_array_size`, `max_jobs_in_queue` in slurm/NAME.yaml:
e.g. to leave room for one's other jobs, or where accounting is not readable); one higher than the cluster's is
an error, since those arrays would be rejected. Submissions are planned with `wave_sizes` (harness/dispatch/slurm.py).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field

from harness.core.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """The limits a submission plans with, and where each came from (for messages)."""

    max_array_size: int | None = None  # None: no limit known
    max_jobs_in_queue: int | None = None
    sources: dict[str, str] = field(default_factory=dict)  # limit name → "scontrol show config: MaxArraySize=1001" …

    def array_cap(self) -> int | None:
        """The largest array that can ever be accepted: an array beyond the queue limit never fits either."""
        caps = [x for x in (self.max_array_size, self.max_jobs_in_queue) if x is not None]
        return min(caps) if caps else None

    def describe(self) -> str:
        def one(name: str, value: int | None) -> str:
            return f"{name} {value if value is not None else 'unlimited'}" + (f" ({self.sources[name]})" if name in self.sources else "")

        return ", ".join([one("max_array_size", self.max_array_size), one("max_jobs_in_queue", self.max_jobs_in_queue)])


# ---- parsing what SLURM prints (pure: tested on captured text) -----------------------------------------------------


def parse_scontrol_config(text: str) -> dict[str, str]:
    """`scontrol show config` as {Key: value}: lines "Key  = value" (other lines, e.g. the header, are skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def _int_or_none(value: str) -> int | None:
    """A limit as sacctmgr/scontrol print it: digits, or empty / "UNLIMITED" / "N/A" for none."""
    value = value.strip()
    return int(value) if value.isdigit() else None


def parse_assoc_limits(text: str, account: str | None) -> tuple[int | None, list[str]]:
    """`sacctmgr -n -P show assoc where user=U format=account,maxsubmit,qos,defaultqos` → the smallest MaxSubmitJobs
    over the user's associations (only `account`'s if given: the one jobs are charged to) and the QOS names they use
    (the default QOS first)."""
    limit: int | None = None
    qos: list[str] = []
    for line in text.splitlines():
        parts = (line.split("|") + ["", "", "", ""])[:4]
        acct, maxsubmit, qos_list, default_qos = (p.strip() for p in parts)
        if not acct or (account and acct != account):
            continue
        value = _int_or_none(maxsubmit)
        if value is not None:
            limit = value if limit is None else min(limit, value)
        for q in [default_qos, *qos_list.split(",")]:
            if q and q not in qos:
                qos.append(q)
    return limit, qos


def parse_qos_limits(text: str, names: list[str]) -> tuple[int | None, str]:
    """`sacctmgr -n -P show qos format=name,maxsubmitpu` → the smallest MaxSubmitJobsPerUser among `names`, and which."""
    limit, which = None, ""
    for line in text.splitlines():
        name, _, value = line.partition("|")
        v = _int_or_none(value)
        if name.strip() in names and v is not None and (limit is None or v < limit):
            limit, which = v, name.strip()
    return limit, which


def _assoc_mgr_records(text: str) -> list[dict[str, str]]:
    """`scontrol show assoc_mgr` text as records {Key: value} (a record starts at a "ClusterName=" or "QOS=" line;
    its keys are every "Key=value" token up to the next record)."""
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0].startswith(("ClusterName=", "QOS=")):
            records.append({})
        if not records:
            continue
        for token in tokens:
            key, sep, value = token.partition("=")
            if sep and key and key not in records[-1]:
                records[-1][key] = value
    return records


def _limit_used(value: str) -> tuple[int | None, int]:
    """"60(12)" → (60, 12); "N(3)" or "" → (None, used): N is SLURM's "no limit"."""
    limit, _, rest = value.partition("(")
    used = rest.rstrip(")")
    return (int(limit) if limit.isdigit() else None), (int(used) if used.isdigit() else 0)


def _name(value: str) -> str:
    """"root(0)" → "root" (assoc_mgr appends uids and ids in parentheses)."""
    return value.partition("(")[0]


def shared_room(assoc_text: str, qos_text: str, user: str, account: str | None,
                qos_names: list[str]) -> tuple[int | None, str]:
    """The jobs this user may still submit under the limits shared with others, and the binding one (for messages):
    the smallest `limit − used` over GrpSubmitJobs of the user's association (in `account`, else the default one),
    of each account up its ParentAccount chain (as far as `assoc_text` has the records), and of the QOS in
    `qos_names`, from `scontrol show assoc_mgr flags=assoc users=USER` and `… flags=qos` text. (None, "") when
    none of them has a limit."""
    records = _assoc_mgr_records(assoc_text)
    users = [r for r in records if _name(r.get("UserName", "")) == user]
    mine = next((r for r in users if account and r.get("Account") == account), None) or \
        next((r for r in users if r.get("DefAssoc") == "Yes"), None)
    best: tuple[int | None, str] = (None, "")

    def consider(value: str, what: str) -> None:
        nonlocal best
        limit, used = _limit_used(value)
        if limit is not None and (best[0] is None or limit - used < best[0]):
            best = (max(0, limit - used), f"{what}: GrpSubmitJobs={limit} ({used} counted)")

    if mine is not None:
        consider(mine.get("GrpSubmitJobs", ""), f"association of {user} in account {mine.get('Account')}")
        accounts = {r.get("Account"): r for r in records if not _name(r.get("UserName", ""))}
        name, seen = mine.get("Account"), set()
        while name and name in accounts and name not in seen:  # up the tree: each account's group limit
            seen.add(name)
            consider(accounts[name].get("GrpSubmitJobs", ""), f"account {name}")
            name = _name(accounts[name].get("ParentAccount", ""))
    for r in _assoc_mgr_records(qos_text):
        if _name(r.get("QOS", "")) in qos_names:
            consider(r.get("GrpSubmitJobs", ""), f"QOS {_name(r['QOS'])}")
    return best


# ---- combining with the profile ------------------------------------------------------------------------------------


def combine(
    cluster_array: int | None,
    cluster_queue: int | None,
    sources: dict[str, str],
    profile_array: int | None,
    profile_queue: int | None,
    where: str,
) -> Limits:
    """The cluster's limits, lowered by the profile's; a profile limit above the cluster's is a ConfigError."""
    for key, mine, theirs in (("max_array_size", profile_array, cluster_array), ("max_jobs_in_queue", profile_queue, cluster_queue)):
        if mine is not None and theirs is not None and mine > theirs:
            raise ConfigError(
                f"{where}.{key}: {mine} is more than the cluster allows ({theirs}, from {sources.get(key, 'SLURM')}); "
                f"sbatch would reject such submissions. Set it to at most {theirs}, or remove it to use the cluster's limit"
            )
    src = dict(sources)
    if profile_array is not None:
        src["max_array_size"] = f"{where}.max_array_size"
    if profile_queue is not None:
        src["max_jobs_in_queue"] = f"{where}.max_jobs_in_queue"
    return Limits(
        profile_array if profile_array is not None else cluster_array,
        profile_queue if profile_queue is not None else cluster_queue,
        src,
    )


def wave_sizes(n_elements: int, max_array: int | None, room: int | None) -> list[int]:
    """The arrays to submit now: at most `max_array` elements each, together at most `room` (free places in the
    queue), in order, covering as many of the `n_elements` as fit. E.g. 250 elements, arrays of ≤ 101, room 150 →
    [101, 49]; the other 100 wait for room."""
    left = n_elements if room is None else min(n_elements, max(0, room))
    size = max_array or left or 1
    sizes = []
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


# ---- asking the cluster --------------------------------------------------------------------------------------------


def cluster_limits(account: str | None, qos: str | None, log=print) -> tuple[int | None, int | None, dict[str, str]]:
    """MaxArraySize and the user's queue limit as the cluster reports them (None where it does not say)."""
    from harness.dispatch.slurm_queue import QueueError, _slurm

    sources: dict[str, str] = {}
    config = parse_scontrol_config(_slurm("scontrol", "show", "config"))
    max_array = _int_or_none(config.get("MaxArraySize", ""))
    if max_array is not None:
        sources["max_array_size"] = f"scontrol show config: MaxArraySize={max_array}"
    queue = _int_or_none(config.get("MaxJobCount", ""))
    if queue is not None:
        sources["max_jobs_in_queue"] = f"scontrol show config: MaxJobCount={queue}"
    user = getpass.getuser()
    cluster = config.get("ClusterName", "")
    try:
        where = [f"user={user}"] + ([f"cluster={cluster}"] if cluster else [])
        assoc, qos_names = parse_assoc_limits(
            _slurm("sacctmgr", "-n", "-P", "show", "assoc", "where", *where, "format=account,maxsubmit,qos,defaultqos"), account
        )
        if qos:
            qos_names = [qos]
        per_user, which = parse_qos_limits(_slurm("sacctmgr", "-n", "-P", "show", "qos", "format=name,maxsubmitpu"), qos_names)
    except (QueueError, FileNotFoundError) as exc:
        log(f"note: SLURM accounting does not answer ({exc}); per-user job limits unknown — set max_jobs_in_queue in the profile if the site has one")
        return max_array, queue, sources
    for value, source in ((assoc, f"sacctmgr association of {user}: MaxSubmitJobs={assoc}"),
                          (per_user, f"sacctmgr QOS {which}: MaxSubmitJobsPerUser={per_user}")):
        if value is not None and (queue is None or value < queue):
            queue, sources["max_jobs_in_queue"] = value, source
    return max_array, queue, sources


def ask_shared_room(account: str | None, qos: str | None) -> tuple[int | None, str]:
    """`shared_room` as the controller reports it now. The QOS considered: `qos` if given, else the user's
    association's default and allowed ones (sacctmgr). A controller too old for `assoc_mgr` (or without
    accounting) answers nothing here: (None, "")."""
    from harness.dispatch.slurm_queue import QueueError, _slurm

    user = getpass.getuser()
    try:
        assoc = _slurm("scontrol", "show", "assoc_mgr", f"users={user}", "flags=assoc")
        qos_text = _slurm("scontrol", "show", "assoc_mgr", "flags=qos")
    except (QueueError, FileNotFoundError):
        return None, ""
    names = [qos] if qos else []
    if not qos:  # the QOS the association may use (its default first); unknown without sacctmgr
        try:
            _, names = parse_assoc_limits(_slurm("sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}",
                                                 "format=account,maxsubmit,qos,defaultqos"), account)
        except (QueueError, FileNotFoundError):
            pass
    return shared_room(assoc, qos_text, user, account, names)


def jobs_in_queue() -> int:
    """This user's jobs and array elements pending or running now (what MaxSubmitJobs counts)."""
    from harness.dispatch.slurm_queue import _slurm

    return len(_slurm("squeue", "-u", getpass.getuser(), "-h", "-r", "-t", "PD,R,CG,CF,S,RQ", "-o", "%i").split())

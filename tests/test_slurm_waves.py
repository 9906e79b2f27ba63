"""Large grids on a limited cluster, without a cluster: reading MaxArraySize and the per-user job limit, profile
overrides, arrays in waves under the queue limit, packing, a submitter stopped and rerun, an array the cluster
rejects. A fake cluster stands in for sbatch/squeue and enforces the limits as SLURM does (an index >= MaxArraySize
or a queue beyond MaxSubmitJobs rejects the whole array), so a planning mistake fails as a rejection. The same
behaviour on the real multi-node dev cluster: tests/test_slurm.py."""

from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.core.errors import ConfigError
from harness.core.io import atomic_write_json
from harness.dispatch import slurm, slurm_queue, status
from harness.dispatch.slurm import load_profile, pack_cells, resolve_limits, submit
from harness.dispatch.slurm_limits import (Limits, combine, parse_assoc_limits, parse_qos_limits, parse_scontrol_config,
                                           shared_room,
                                           wave_sizes)
from harness.dispatch.slurm_queue import JobState, read_ledger
from harness.resolve import resolve
from harness.store import run_dir
from tests.conftest import FAST
from tests.fakes import finished_result

SCONTROL = """Configuration data as of 2026-12-04T15:00:00
AccountingStorageEnforce = associations,limits,qos
ClusterName             = clmerge
MaxArraySize            = 101
MaxJobCount             = 10000
SLURM_VERSION           = 22.05.8
"""


def test_parse_what_slurm_prints():
    cfg = parse_scontrol_config(SCONTROL)
    assert (cfg["MaxArraySize"], cfg["MaxJobCount"], cfg["ClusterName"]) == ("101", "10000", "clmerge")
    assert "Configuration data as of 2026-12-04T15:00:00" not in cfg  # the header is not a key
    assoc = "clmerge|150|normal,high|normal\nother|90|normal|\nroot||normal|\n"
    assert parse_assoc_limits(assoc, None) == (90, ["normal", "high"])  # the smallest over the user's associations
    assert parse_assoc_limits(assoc, "clmerge") == (150, ["normal", "high"])  # the profile's account only
    assert parse_assoc_limits("root||normal|\n", None) == (None, ["normal"])  # empty: no limit
    qos = "normal|\nhigh|40\nlow|10\n"
    assert parse_qos_limits(qos, ["normal", "high"]) == (40, "high") and parse_qos_limits(qos, ["normal"]) == (None, "")


def test_cluster_limits_take_the_smallest_of_config_association_and_qos(monkeypatch):
    answers = {
        "scontrol": SCONTROL,
        "assoc": "clmerge|150|normal|normal\n",
        "qos": "normal|120\n",
    }
    monkeypatch.setattr(slurm_queue, "_slurm", lambda *a: answers["scontrol" if a[0] == "scontrol" else a[4]])
    limits = resolve_limits(load_profile("dev-cluster"), log=lambda _: None)
    assert (limits.max_array_size, limits.max_jobs_in_queue) == (101, 120)
    assert limits.sources["max_jobs_in_queue"] == "sacctmgr QOS normal: MaxSubmitJobsPerUser=120"
    answers["qos"] = "normal|\n"
    limits = resolve_limits(load_profile("dev-cluster"), log=lambda _: None)
    assert limits.max_jobs_in_queue == 150 and "MaxSubmitJobs=150" in limits.sources["max_jobs_in_queue"]


def test_profile_limits_lower_the_cluster_and_may_not_exceed_it():
    src = {"max_array_size": "scontrol show config: MaxArraySize=1001"}
    lim = combine(1001, 500, src, 200, None, "slurm/site.yaml")
    assert (lim.max_array_size, lim.max_jobs_in_queue) == (200, 500)
    assert lim.sources["max_array_size"] == "slurm/site.yaml.max_array_size" and lim.array_cap() == 200
    assert combine(None, None, {}, None, 40, "p").max_jobs_in_queue == 40  # accounting silent: the profile decides
    with pytest.raises(ConfigError, match=r"slurm/site.yaml.max_array_size: 2000 is more than the cluster allows "
                                          r"\(1001, from scontrol show config: MaxArraySize=1001\).*at most 1001"):
        combine(1001, 500, src, 2000, None, "slurm/site.yaml")
    with pytest.raises(ConfigError, match=r"max_jobs_in_queue: 600 is more than the cluster allows \(500"):
        combine(1001, 500, src, None, 600, "p")


@pytest.mark.parametrize(
    "n, max_array, room, sizes",
    [
        (250, 101, 150, [101, 49]),
        (250, 101, None, [101, 101, 48]),
        (100, 101, 150, [100]),
        (202, 101, 1000, [101, 101]),
        (5, None, None, [5]),
        (10, 4, 0, []),
        (10, 4, -3, []),  # more queued than the limit (e.g. lowered meanwhile): nothing now
        (0, 4, 10, []),
    ],
)
def test_wave_sizes(n, max_array, room, sizes):
    assert wave_sizes(n, max_array, room) == sizes


def test_pack_cells_keeps_grid_order():
    assert pack_cells(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert pack_cells(list(range(3)), 1) == [[0], [1], [2]]


# ---- submission against a fake cluster that enforces the limits ----------------------------------------------------


class FakeJob:
    def __init__(self, folder: Path, job_id: str):
        self.job_id = job_id
        self.paths = type("P", (), {"stdout": folder / f"{job_id}.out", "stderr": folder / f"{job_id}.err"})()


class FakeCluster:
    """sbatch/squeue as SLURM answers them: arrays beyond MaxArraySize or beyond MaxSubmitJobs are rejected whole."""

    def __init__(self, max_array_size: int, max_submit: int, group_limit: int | None = None, others: int = 0):
        self.max_array_size, self.max_submit = max_array_size, max_submit
        self.group_limit, self.others = group_limit, others  # an account's GrpSubmitJobs, other users' jobs under it
        self.states: dict[str, str] = {}
        self.cells: dict[str, list[dict]] = {}  # job id → the cells it runs
        self.arrays: list[int] = []  # elements per accepted array
        self.next_id = 100
        self.comments: dict[str, str] = {}  # job id → its sbatch comment
        self.lose_reply = False  # sbatch times out after the controller queued the array

    def install(self, monkeypatch):
        monkeypatch.setattr(slurm, "make_executor", lambda profile, folder: self.executor(folder))
        monkeypatch.setattr(slurm, "jobs_in_queue", self.in_queue)
        # the controller's assoc_mgr report, parsed by the real shared_room
        monkeypatch.setattr(slurm, "ask_shared_room", lambda account, qos: shared_room(
            self.assoc_mgr_text(), "", "alice", account, []))
        monkeypatch.setattr(status, "job_states", lambda ids: {j: JobState(self.states.get(j, "GONE")) for j in ids})
        monkeypatch.setattr(slurm_queue, "jobs_with_comment", lambda c: [j for j, k in self.comments.items()
                                                                         if k == c and self.states[j] == "PENDING"])
        monkeypatch.setattr(slurm_queue, "cancel", lambda ids: self.states.update({j: "CANCELLED" for j in ids}))

    def executor(self, folder):
        cluster = self

        class Executor:
            comment = ""

            def update_parameters(self, **params):
                self.comment = params.get("comment", self.comment)

            def map_array(self, fn, cell_lists, *rest):
                n = len(cell_lists)
                if n > cluster.max_array_size:  # index n-1 >= MaxArraySize
                    raise RuntimeError("sbatch: error: Batch job submission failed: Invalid job array specification")
                if cluster.in_queue() + n > cluster.max_submit:
                    raise RuntimeError("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed")
                if cluster.group_limit is not None and cluster.others + cluster.in_queue() + n > cluster.group_limit:
                    raise RuntimeError("sbatch: error: AssocGrpSubmitJobsLimit\nsbatch: error: Batch job submission failed")
                array = str(cluster.next_id)
                cluster.next_id += 1
                ids = [f"{array}_{i}" for i in range(n)] if n > 1 else [array]
                for jid, cells in zip(ids, cell_lists):
                    cluster.states[jid], cluster.cells[jid], cluster.comments[jid] = "PENDING", cells, self.comment
                cluster.arrays.append(n)
                if cluster.lose_reply:
                    raise RuntimeError("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation")
                return [FakeJob(folder, jid) for jid in ids]

        return Executor()

    def in_queue(self) -> int:
        return sum(s == "PENDING" for s in self.states.values())

    def assoc_mgr_text(self) -> str:
        """`scontrol show assoc_mgr users=alice flags=assoc` as SLURM 23 prints it (abridged): alice's association in
        account lab, under account dept (the group limit, shared with other users), under root."""
        grp = "N" if self.group_limit is None else str(self.group_limit)
        used = self.others + self.in_queue()
        return "\n".join([
            "Current Association Manager state", "", "Association Records", "",
            "ClusterName=c Account=root UserName= Partition= Priority=0 ID=1",
            "    ParentAccount= Lft=1 DefAssoc=No", f"    GrpJobs=N({used}) GrpJobsAccrue=N(0)",
            f"    GrpSubmitJobs=N({used}) GrpWall=N(0.00)", "    MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ=",
            "ClusterName=c Account=dept UserName= Partition= Priority=0 ID=2",
            "    ParentAccount=root(1) Lft=2 DefAssoc=No", f"    GrpSubmitJobs={grp}({used}) GrpWall=N(0.00)",
            "    MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ=",
            "ClusterName=c Account=lab UserName= Partition= Priority=0 ID=3",
            "    ParentAccount=dept(2) Lft=3 DefAssoc=No", f"    GrpSubmitJobs=N({used}) GrpWall=N(0.00)",
            "ClusterName=c Account=lab UserName=alice(1001) Partition= Priority=0 ID=4",
            "    ParentAccount= Lft=4 DefAssoc=Yes", f"    GrpSubmitJobs=N({self.in_queue()}) GrpWall=N(0.00)",
            f"    MaxJobs= MaxJobsAccrue= MaxSubmitJobs={self.max_submit}({self.in_queue()}) MaxWallPJ=",
        ])

    def finish(self, n: int, root: Path) -> None:
        """The first `n` queued jobs complete, with a result for each of their cells."""
        for jid in [j for j, s in self.states.items() if s == "PENDING"][:n]:
            self.states[jid] = "COMPLETED"
            for data in self.cells[jid]:
                atomic_write_json(run_dir(RunConfig.from_dict(data), root) / "result.json", finished_result(data))


def _cells(n: int):
    return [resolve("split-digits-2x5", "seq-lora", seed=s, overrides=FAST) for s in range(n)]


def _profile(**kw):
    p = load_profile("dev-cluster")
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def _submitted_once(cells, root: Path) -> None:
    ledger = read_ledger(root)
    assert all(len(ledger[c.run_id()]) == 1 for c in cells), "a cell was submitted twice or never"


def test_250_cells_in_waves_stop_and_rerun_each_submitted_once(results, monkeypatch):
    cluster = FakeCluster(max_array_size=101, max_submit=150)
    cluster.install(monkeypatch)
    cells, lim, logs = _cells(250), Limits(101, 150), []

    first = submit(cells, _profile(), results, limits=lim, log=logs.append)
    assert cluster.arrays == [101, 49] and len(first.submitted) == 150 and len(first.remaining) == 100
    assert first.remaining == cells[150:]  # grid order: the rest waits
    assert "100 cells not submitted yet: the queue holds 0 of at most 150 jobs" in logs[-1] and "Rerun the same command" in logs[-1]

    again = submit(cells, _profile(), results, limits=lim, log=logs.append)  # rerun at once: the queue is full
    assert cluster.arrays == [101, 49] and again.submitted == [] and len(again.remaining) == 100
    assert [again.skipped[c.run_id()] for c in cells[99:102]] == ["pending (job 100_99)", "pending (job 100_100)", "pending (job 101_0)"]
    assert len(again.skipped) == 150 and all(v.startswith("pending (job ") for v in again.skipped.values())

    cluster.finish(120, results)  # room for 120: the other 100 fit in one array
    third = submit(cells, _profile(), results, limits=lim, log=logs.append)
    assert cluster.arrays == [101, 49, 100] and third.submitted == cells[150:] and third.remaining == []
    assert sum(v.startswith("done (job ") for v in third.skipped.values()) == 120
    cluster.finish(1000, results)
    assert submit(cells, _profile(), results, limits=lim, log=logs.append).submitted == []
    _submitted_once(cells, results)


def test_shared_room_reads_group_limits_up_the_account_tree_and_the_qos():
    """`scontrol show assoc_mgr` text (captured on the dev cluster with GrpSubmitJobs set on account clmerge, then
    the counts edited): the smallest limit − used over the user's association, each account above it and the QOS."""
    assoc = """Current Association Manager state

Association Records

ClusterName=clmerge Account=root UserName= Partition= Priority=0 ID=1
    SharesRaw/Norm/Level/Factor=1/18446744073709551616.00/1/0.00
    ParentAccount= Lft=1 DefAssoc=No
    GrpJobs=N(0) GrpJobsAccrue=N(0)
    GrpSubmitJobs=500(470) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ=
ClusterName=clmerge Account=root UserName=root(0) Partition= Priority=0 ID=2
    ParentAccount= Lft=6 DefAssoc=No
    GrpSubmitJobs=N(0) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=150(0) MaxWallPJ=
ClusterName=clmerge Account=clmerge UserName= Partition= Priority=0 ID=3
    ParentAccount=root(1) Lft=2 DefAssoc=No
    GrpSubmitJobs=60(12) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=120(12) MaxWallPJ=
ClusterName=clmerge Account=clmerge UserName=root(0) Partition= Priority=0 ID=4
    ParentAccount= Lft=3 DefAssoc=Yes
    GrpSubmitJobs=N(5) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=150(5) MaxWallPJ=
"""
    qos = """QOS Records

QOS=normal(1)
    UsageRaw=0.000000
    GrpJobs=N(0) GrpJobsAccrue=N(0) GrpSubmitJobs=N(0) GrpWall=N(0.00)
        MaxJobsPU=N(0) MaxJobsAccruePU=N(0) MaxSubmitJobsPU=N(0)
QOS=short(2)
    GrpJobs=N(0) GrpJobsAccrue=N(0) GrpSubmitJobs=40(37) GrpWall=N(0.00)
"""
    # the default association (clmerge): its account allows 60 − 12 = 48; root above it 500 − 470 = 30
    assert shared_room(assoc, qos, "root", None, ["normal"]) == (30, "account root: GrpSubmitJobs=500 (470 counted)")
    assert shared_room(assoc, qos, "root", None, ["normal", "short"]) == (3, "QOS short: GrpSubmitJobs=40 (37 counted)")
    # jobs charged to account root: only root's own limit is above that association
    assert shared_room(assoc, qos, "root", "root", []) == (30, "account root: GrpSubmitJobs=500 (470 counted)")
    no_root_limit = assoc.replace("GrpSubmitJobs=500(470)", "GrpSubmitJobs=N(470)")
    assert shared_room(no_root_limit, qos, "root", None, []) == (48, "account clmerge: GrpSubmitJobs=60 (12 counted)")
    full = no_root_limit.replace("GrpSubmitJobs=60(12)", "GrpSubmitJobs=60(75)")  # over the limit: no room, not negative
    assert shared_room(full, "", "root", None, [])[0] == 0
    assert shared_room(no_root_limit.replace("60(12)", "N(12)"), "", "root", None, []) == (None, "")  # no group limit
    assert shared_room(assoc, qos, "bob", None, ["short"]) == (3, "QOS short: GrpSubmitJobs=40 (37 counted)")  # no association


def test_a_group_limit_shared_with_other_users_bounds_each_wave(results, monkeypatch):
    """Account dept allows 100 jobs (GrpSubmitJobs) and other users hold 70 of them: the first submission sends 30,
    says which limit binds, and nothing is rejected; as jobs end the rest follow, each cell submitted once."""
    cluster = FakeCluster(max_array_size=101, max_submit=150, group_limit=100, others=70)
    cluster.install(monkeypatch)
    cells, lim, logs = _cells(80), Limits(101, 150), []
    first = submit(cells, _profile(), results, limits=lim, log=logs.append)
    assert cluster.arrays == [30] and len(first.submitted) == 30 and first.remaining == cells[30:]
    assert "50 cells not submitted yet: the shared limit account dept: GrpSubmitJobs=100 (70 counted) left room for 30" in logs[-1]
    cluster.others = 20  # other users' jobs end
    cluster.finish(30, results)
    second = submit(cells, _profile(), results, limits=lim, log=logs.append)
    assert cluster.arrays == [30, 50] and second.submitted == cells[30:] and second.remaining == []
    _submitted_once(cells, results)


def test_wait_for_room_keeps_submitting_and_an_interrupted_submitter_resumes(results, monkeypatch):
    cluster = FakeCluster(max_array_size=101, max_submit=150)
    cluster.install(monkeypatch)
    cells, lim = _cells(250), Limits(101, 150)
    sleeps = []

    def interrupted(seconds):  # the submitter is stopped (Ctrl-C, login node reboot) while it waits
        sleeps.append(seconds)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        submit(cells, _profile(submit_poll_s=7), results, limits=lim, log=lambda _: None, wait_for_room=True, sleep=interrupted)
    assert sleeps == [7] and cluster.arrays == [101, 49]

    def jobs_finish(seconds):  # while the submitter waits, 60 jobs end each time
        sleeps.append(seconds)
        cluster.finish(60, results)

    sub = submit(cells, _profile(submit_poll_s=7), results, limits=lim, log=lambda _: None, wait_for_room=True, sleep=jobs_finish)
    assert cluster.arrays == [101, 49, 60, 40] and sub.remaining == [] and len(sub.submitted) == 100
    assert sleeps == [7, 7, 7] and cluster.in_queue() <= 150  # the rerun waited twice: full, then 60 free
    _submitted_once(cells, results)


def test_pack_runs_several_cells_per_element(results, monkeypatch):
    cluster = FakeCluster(max_array_size=3, max_submit=150)
    cluster.install(monkeypatch)
    cells = _cells(10)
    sub = submit(cells, _profile(pack=3), results, limits=Limits(3, 150), log=lambda _: None)
    assert cluster.arrays == [3, 1] and sub.remaining == []  # 4 elements: 3 + 3 + 3 | 1
    seeds = {jid: [c["seed"] for c in cl] for jid, cl in cluster.cells.items()}
    assert seeds == {"100_0": [0, 1, 2], "100_1": [3, 4, 5], "100_2": [6, 7, 8], "101": [9]}
    ledger = read_ledger(results)
    assert [ledger[c.run_id()][0]["job_id"] for c in cells[:4]] == ["100_0", "100_0", "100_0", "100_1"]
    assert sub.arrays == ["100", "101"]


def test_an_array_the_cluster_rejects_is_one_clear_error_and_nothing_is_lost(results, monkeypatch):
    cluster = FakeCluster(max_array_size=101, max_submit=120)  # the cluster's real limit is below what we plan with
    cluster.install(monkeypatch)
    cells = _cells(250)
    with pytest.raises(ConfigError) as err:
        submit(cells, _profile(), results, limits=Limits(101, 150), log=lambda _: None)
    msg = str(err.value)
    assert "sbatch failed for an array of 49 elements (49 cells): sbatch: error: AssocMaxSubmitJobLimit" in msg
    assert "No job of it is in the queue." in msg
    assert "101 cells submitted before it are recorded in the ledger" in msg and "rerun the same command" in msg
    assert len(read_ledger(results)) == 101  # the accepted array is recorded, the rejected one is not

    sub = submit(cells, _profile(max_jobs_in_queue=120), results, limits=Limits(101, 120), log=lambda _: None)
    assert cluster.arrays == [101, 19] and len(sub.submitted) == 19 and len(sub.skipped) == 101
    cluster.finish(1000, results)
    submit(cells, _profile(), results, limits=Limits(101, 120), log=lambda _: None)
    cluster.finish(1000, results)
    assert submit(cells, _profile(), results, limits=Limits(101, 120), log=lambda _: None).remaining == []
    _submitted_once(cells, results)


def test_a_lost_sbatch_reply_cancels_the_jobs_the_controller_queued_anyway(results, monkeypatch):
    """sbatch times out after the controller queued the array: submitit never learnt the job ids (its jobs could not
    find their cells), so they are found by the submission's comment and cancelled, the error says so, nothing is
    recorded, and the rerun submits every cell exactly once."""
    cluster = FakeCluster(max_array_size=101, max_submit=500)
    cluster.install(monkeypatch)
    cells, lim = _cells(150), Limits(101, 500)
    cluster.lose_reply = True
    with pytest.raises(ConfigError) as err:
        submit(cells, _profile(), results, limits=lim, log=lambda _: None, sleep=lambda _: None)
    msg = str(err.value)
    assert "sbatch failed for an array of 101 elements (101 cells)" in msg and "Socket timed out" in msg
    assert "had queued 101 of its jobs anyway (found by their comment clmerge-submission:" in msg and "cancelled" in msg
    assert set(cluster.states.values()) == {"CANCELLED"} and not read_ledger(results)
    cluster.lose_reply = False
    again = submit(cells, _profile(), results, limits=lim, log=lambda _: None)
    assert len(again.submitted) == 150 and cluster.arrays == [101, 101, 49]
    _submitted_once(cells, results)
    assert len({cluster.comments[j] for j in cluster.comments}) == 3  # a fresh token per array


def test_a_queue_that_does_not_answer_submits_nothing(results, monkeypatch):
    cluster = FakeCluster(max_array_size=101, max_submit=150)
    cluster.install(monkeypatch)

    def silent():
        raise slurm_queue.QueueError("squeue did not answer within 90 s")

    monkeypatch.setattr(slurm, "jobs_in_queue", silent)
    with pytest.raises(ConfigError, match="SLURM does not answer .*squeue did not answer.*0 cells were submitted"):
        submit(_cells(3), _profile(), results, limits=Limits(101, 150), log=lambda _: None)
    assert cluster.arrays == [] and read_ledger(results) == {}


@pytest.mark.parametrize("data, message", [({"pack": 0}, "pack: must be >= 1"),
                                           ({"max_array_size": 0}, "max_array_size: must be >= 1 (or null"),
                                           ({"max_jobs_in_queue": -1}, "max_jobs_in_queue: must be >= 1")])
def test_bad_limit_keys_in_a_profile(tmp_path, data, message):
    import yaml

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_profile(str(p))


def test_job_states_asks_sacct_in_chunks(monkeypatch):
    calls = []

    def fake(*args):
        calls.append(args)
        return "" if args[0] == "squeue" else "".join(f"{j}|COMPLETED|00:00:01\n" for j in args[5].split(","))

    monkeypatch.setattr(slurm_queue, "_slurm", fake)
    monkeypatch.setattr(slurm_queue, "SACCT_CHUNK", 3)
    ids = [f"5_{i}" for i in range(7)]
    st = slurm_queue.job_states(ids)
    assert [len(c[5].split(",")) for c in calls[1:]] == [3, 3, 1]  # every id asked once
    assert {s.state for s in st.values()} == {"COMPLETED"} and set(st) == set(ids)


def test_status_asks_slurm_only_about_unfinished_cells(results, monkeypatch):
    cells = _cells(3)
    atomic_write_json(run_dir(cells[0], results) / "result.json", finished_result(cells[0]))
    from harness.dispatch.slurm_queue import _record

    _record(results, {c.run_id(): {"job_id": f"8_{i}", "stdout": "", "stderr": ""} for i, c in enumerate(cells)})
    asked = []
    monkeypatch.setattr(status, "job_states", lambda ids: asked.extend(ids) or {j: JobState("RUNNING") for j in ids})
    got = [s.state for s in status.cell_statuses(cells, results)]
    assert got == ["done", "running", "running"] and sorted(asked) == ["8_1", "8_2"]

"""`invoke fork-sync` against `git fetch upstream main && git merge FETCH_HEAD`, on identical clones of a
vLLM-sized fork thousands of upstream commits behind (BENCH_BEHIND, 3,000 by default: a few weeks of vLLM's
history), carrying its own extras/ and workflow; the two take turns, and the medians are compared."""

from __future__ import annotations

import os
from pathlib import Path

from common import import_invoke_seconds, invoke, median, support, timed, vllm_sized_upstream

BEHIND = int(os.environ.get("BENCH_BEHIND", "3000"))  # thousands: what a fork a few weeks behind merges


# Rounds, a multiple of 4 so that each clone order meets each run order equally often. The same git merge took
# 0.26 to 0.73 s from one round to the next here (the disk), so 16 rather than 8 medians.
ROUNDS = 16


def run(work: Path, rounds: int = ROUNDS) -> dict:
    up = vllm_sized_upstream(work / "upstream")
    seed = work / "seed"
    # A fork thousands of commits behind has none of their objects, so its fetch receives and indexes a pack of
    # them (1.4 s of a 1.7 s sync here). A clone of the whole upstream moved back would hold them all: git fetch
    # then only checked that they were there (0.1 s), which no fork's sync does.
    fork_point = support.git(up, "rev-parse", f"HEAD~{BEHIND}")
    support.sh("git", "init", "-q", seed)
    support.git(seed, "fetch", "-q", str(up), f"{fork_point}:refs/heads/main")
    support.git(seed, "checkout", "-q", "main")
    (seed / "extras").mkdir()
    (seed / "extras" / "fork.txt").write_text("fork only\n")
    (seed / ".github" / "workflows").mkdir(parents=True, exist_ok=True)
    (seed / ".github" / "workflows" / "fork-sync.yml").write_text("name: fork-sync\n")
    support.commit_all(seed, "fork: tooling")
    ours, plain = [], []
    for i in range(rounds):
        a, b = work / f"a{i}", work / f"b{i}"
        # Which clone is made first alternates too: on ext4 here, files in the clone made first were rewritten up
        # to 2x slower in some rounds (placement), and fork-sync always got that one.
        for clone in (a, b) if i % 2 == 0 else (b, a):
            support.sh("git", "clone", "-q", seed, clone)
            support.git(clone, "remote", "add", "upstream", str(up))
            support.settle_checkout(clone)  # a checkout as users have one

        def run_ours(a=a):
            ours.append(timed(lambda: invoke("fork-sync", "--repo", str(a), "--quiet", cache=work / "cache")))

        def run_plain(b=b):
            plain.append(
                timed(
                    lambda: (
                        support.git(b, "fetch", "-q", "upstream", "main"),
                        support.git(b, "merge", "-q", "--no-edit", "FETCH_HEAD"),
                    )
                )
            )

        for step in (run_ours, run_plain) if i // 2 % 2 == 0 else (run_plain, run_ours):  # no one's cache is warm
            # The clones' (and the last step's) dirty pages written out first, so that neither step pays for them.
            os.sync()
            step()
        assert support.git(a, "rev-parse", "HEAD^{tree}") == support.git(b, "rev-parse", "HEAD^{tree}")
    startup = median([invoke("--list", cache=work / "cache")[0] for _ in range(5)])
    return {
        "startup_seconds": startup,
        "import_invoke_seconds": import_invoke_seconds(),
        "files": len(support.git(up, "ls-files").splitlines()),
        "commits": int(support.git(up, "rev-list", "--count", "HEAD")),
        "merged_commits": BEHIND,
        "fork_sync_seconds": median(ours),
        "git_merge_seconds": median(plain),
        "ratio": median(ours) / median(plain),
        "rounds": {"fork_sync": ours, "git_merge": plain},  # the spread behind the medians
    }


def report(r: dict) -> None:
    print(
        f"\ninvoke fork-sync of {r['merged_commits']} upstream commits into a fork ({r['files']} files, "
        f"{r['commits']} commits):"
    )
    print(
        f"  invoke fork-sync     {r['fork_sync_seconds']:>8.3f} s   "
        f"git fetch + git merge {r['git_merge_seconds']:.3f} s"
        f"   ratio {r['ratio']:.2f}x (target <= 1.1x); medians of {len(r['rounds']['fork_sync'])}, same merged tree"
    )
    rest = (r["fork_sync_seconds"] - r["startup_seconds"]) / r["git_merge_seconds"]
    print(
        f"  of which interpreter + invoke startup ('invoke --list') {r['startup_seconds']:.3f} s; "
        f"without it {rest:.2f}x"
    )
    share = r["import_invoke_seconds"] / r["git_merge_seconds"]
    print(
        f"  'python -c \"import invoke\"' alone {r['import_invoke_seconds']:.3f} s, {share:.0%} of the naive way; "
        f"fork-sync's checkout writes on {os.cpu_count()} workers (checkout.workers=0), git merge's on one"
    )

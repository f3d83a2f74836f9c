"""Break the code on purpose, once per kind of leakage, and check that the leakage tests fail.

Issue 16 names four ways a held-out item can reach a user's inputs; each is written here as
one exact source edit (an anchor that must be found once, or the script stops: the edit would
otherwise test nothing). For each, the repository's tracked files are copied to a temporary
folder, the edit is applied there (the checkout is never touched), and the named tests run
against that copy. A mutation is *caught* when at least one test fails (not errors: a crash
would prove nothing about leakage), and the same selections pass first on an unbroken copy
(the control). The table lists the tests that failed.

    python benchmarks/leakage_mutations.py [--only NAME ...] [--out benchmarks/results/leakage-mutations.md]

Slow (each mutation trains the tiny slice a few times): minutes per mutation, not for CI.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAKAGE = "tests/test_leakage.py"

# name -> (what it breaks, file, anchor, replacement, tests (pytest args))
MUTATIONS = {
    "full dataset": (
        "the model is built from the whole dataset (valid and test interactions included) instead of "
        "the train split, so every construction-time statistic sees them",
        "recbole_llm_mtl/build.py",
        "    model = model_class(config, train._dataset).to(config[\"device\"])",
        "    dataset.is_train_split = True\n    model = model_class(config, dataset).to(config[\"device\"])",
        [LEAKAGE, "-k", "default"]),
    "held-out items in training histories": (
        "each user's test row (its history holds the valid item, its target is the test item) is "
        "appended to the train split before the training windows are cut",
        "recbole_llm_mtl/data/dataset.py",
        "        datasets = super().build()\n        if self.config[\"train_all_positions\"]:",
        "        datasets = super().build()\n        from recbole.data.interaction import cat_interactions\n"
        "        datasets[0] = datasets[0].copy(cat_interactions([datasets[0].inter_feat, datasets[2].inter_feat]))\n"
        "        if self.config[\"train_all_positions\"]:",
        [LEAKAGE, "-k", "default"]),
    "held-out reviews in user text": (
        "user text reads every review the user wrote, whatever the item and whenever written, so "
        "the reviews of the valid and test interactions reach the user's text",
        "recbole_llm_mtl/data/user_text.py",
        "        for item in last if self.reviews else ():\n"
        "            written = [k for k, (ts, _) in enumerate(self.reviews.get((user, item), ())) if ts < bound]",
        "        for item in ([i for (u, i) in self.reviews if u == user] if self.reviews else ()):\n"
        "            written = list(range(len(self.reviews.get((user, item), ()))))",
        [LEAKAGE, "-k", "user_text"]),
    "held-out item text in user text": (
        "the position a valid/test item is scored from reads that item's own title (and review) "
        "in its user text, as if the item were already in the history",
        "recbole_llm_mtl/data/user_text.py",
        "                out.append((b, p, self.key(user, seq[: p + 1], bound)))",
        "                out.append((b, p, self.key(user, seq[: p + 1] + ([interaction['item_id'][b].item()]\n"
        "                                                            if last_only else []), bound)))",
        [LEAKAGE, "-k", "user_text"]),
    "cold items left in training": (
        "the cold-start protocol marks its cold items but leaves their train interactions in place",
        "recbole_llm_mtl/data/dataset.py",
        "        datasets[0] = remove_items(datasets[0], self.cold_items, self.item_id_list_field,\n"
        "                                   self.item_list_length_field, self.iid_field)",
        "        pass",
        ["tests/test_cold_start.py"]),
}


def tracked_copy(dest):
    """The checkout's tracked files (as they are on disk) under ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def mutate(folder, rel, anchor, replacement):
    path = os.path.join(folder, rel)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(anchor) != 1:
        raise SystemExit(f"error: {rel}: the mutation's anchor occurs {text.count(anchor)} times (expected once); "
                         "update MUTATIONS in benchmarks/leakage_mutations.py to the current code")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(anchor, replacement))


def run_tests(folder, tests):
    """(failed test ids, errored test ids, passed count, seconds) of pytest on ``folder``."""
    report = os.path.join(folder, "report.xml")
    env = {**os.environ, "PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", "")}
    where = subprocess.run([sys.executable, "-c", "import recbole_llm_mtl; print(recbole_llm_mtl.__file__)"],
                           cwd=folder, env=env, capture_output=True, text=True).stdout.strip()
    if not os.path.realpath(where).startswith(os.path.realpath(folder) + os.sep):
        raise SystemExit(f"error: the tests would import {where!r}, not the mutated copy in {folder}")
    start = time.time()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
                   cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failed, errored, passed = [], [], 0
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None:
            failed.append(name)
        elif case.find("error") is not None:
            errored.append(name)
        elif case.find("skipped") is None:
            passed += 1
    return failed, errored, passed, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(MUTATIONS), help="these mutations only")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "leakage-mutations.md"))
    args = parser.parse_args(argv)
    from recbole_llm_mtl.provenance import git_state

    state = git_state()  # the copy is the tree on disk: say so when it is not the commit
    commit = state["commit"] + (" with uncommitted changes" if state["dirty"] else "")
    rows, caught_all = [], True

    def record(name, what, tests, result, verdict, row_verdict):
        failed, errored, passed, seconds = result
        print(f"{name}: {verdict} ({len(failed)} failed, {len(errored)} errors, {passed} passed, {seconds:.0f} s)",
              flush=True)
        rows.append(f"| {name} | {what} | `{' '.join(tests)}` | {'<br>'.join(failed) or '-'} | "
                    f"{'<br>'.join(errored) or '-'} | {passed} | {row_verdict} |")

    # the control: the same test selections on an unbroken copy must pass, or a failure under a
    # mutation would prove nothing about that mutation
    selections = list(dict.fromkeys(tuple(MUTATIONS[n][4]) for n in args.only or MUTATIONS))
    with tempfile.TemporaryDirectory(prefix="control-") as folder:
        tracked_copy(folder)
        for tests in selections:
            result = run_tests(folder, tests)
            clean = not result[0] and not result[1]
            caught_all &= clean
            record("none (control)", "nothing: the unbroken copy", tests, result, "passes" if clean else "FAILS",
                   "- (passes)" if clean else "**the control fails**")
    for name in args.only or MUTATIONS:
        what, rel, anchor, replacement, tests = MUTATIONS[name]
        with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
            tracked_copy(folder)
            mutate(folder, rel, anchor, replacement)
            result = run_tests(folder, tests)
        caught = bool(result[0])
        caught_all &= caught
        record(name, f"{what} (`{rel}`)", tests, result, "caught" if caught else "NOT CAUGHT",
               "yes" if caught else "**no**")
    lines = ["# Leakage tests against deliberately broken builds", "",
             f"`python benchmarks/leakage_mutations.py{' --only ' + ' '.join(repr(n) for n in args.only) if args.only else ''}`"
             f" at `{commit}`: each row is one source edit applied to a copy of the checkout "
             "(`MUTATIONS` in the script holds the exact edit), then the tests named ran there. "
             "The control rows run the same tests on an unbroken copy: they pass, so each failure "
             "below is the mutation's.", "",
             "| mutation | what it breaks | tests run | failed | errors | passed | caught |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0 if caught_all else 1


if __name__ == "__main__":
    sys.exit(main())

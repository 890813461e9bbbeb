"""Clean, then retrain: does dropping the labels NAW finds suspicious give a better CE model than cleanlab's
out-of-fold cleaning, or than no cleaning at all? On RAF-DB at 30% noise, symmetric and class-conditional (FER+'s
annotator confusions), at the study's CPU scale (docs/study/ambiguity/README.md, "Clean, then retrain").

Steps, each skipped when its outputs exist (so the same command resumes):

1. ``noisy``: the noisy training labels of the protocol, as nla's DataModule makes them (symmetric: RAF-DB's
   ``noise03.txt``; annotator: ``--data.protocol.noise_kind annotator``, noise seed 0), with which labels were
   flipped;
2. ``folds``: cleanlab's out-of-fold predictions: ``--folds`` CE models, each trained on the noisy labels of the
   other folds (``--data.holdout.num_folds``, ``--data.holdout.fold``, a label file per fold), each predicting its
   held-out fold;
3. ``cleanlab``: ``cleanlab.filter.find_label_issues`` on those predictions; its issues are dropped;
4. ``naw``: ``nla label-issues --write_labels drop`` on the from-scratch NLA model trained on the same noisy labels
   (``--naw-run``): the images that model contradicts are dropped; and the fix the study's mechanism suggests, the
   same score averaged over the last three training epochs (``per_sample.npz``), its count the images contradicted in
   most of them; and the fix the first retrain called for (NAW's judgement drops every image a 62%-accurate model
   contradicts, most of the minority classes with them): NAW's ranking chooses which images, confident learning
   decides how many per class (``nla label-issues --suspects confident_learning``: ``find_label_issues``'s per-class
   counts on the same model's probabilities); and its control, ``cleanlab_same_model``: ``find_label_issues`` on
   that model's own probabilities (the same count), so that only the choice of images differs;
5. ``retrain``: CE on each cleaned label file and on the noisy labels themselves, for each of ``--seeds``;
6. ``report``: test accuracy of every retrained model, and each cleaning's precision and recall against the flips.

    python docs/study/cleaning/clean.py all --protocol annotator --data-root /path/to/RAF-DB --work runs/cleaning \\
        --naw-run runs/experiments/noise_class_conditional/annotator-30pct/nla-from_scratch/seed0
    python docs/study/cleaning/clean.py report --work runs/cleaning
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nla import NLAModule
from nla.data import RAFDBDataModule, read_label_file, write_label_file
from nla.data.protocols import LabelProtocol
from nla.data.splits import HoldOut
from nla.label_issues import suspicion
from nla.preprocessing import Preprocessing

HERE = Path(__file__).resolve().parent
PROTOCOLS = {
    "symmetric": ["--config", "configs/noise/30.yaml"],
    "annotator": ["--config", "configs/noise/30.yaml", "--config", "configs/noise/annotator.yaml"],
}
CPU_SCALE = ["--config", "configs/rafdb.yaml", "--config", "configs/study/cpu_scale.yaml"]
CE = ["--config", "configs/methods/ce.yaml"]
QUIET = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "."]
QUIET += ["--trainer.enable_progress_bar", "false"]
VARIANTS = ("none", "naw", "naw_last3", "naw_cl_count", "cleanlab_same_model", "cleanlab")
OFFSET = 1  # RAF-DB writes labels 1..7


FIT_ARGS: list[str] = []  # --fit-args: appended to every nla fit (a smoke test's tiny settings)


def nla(*args: str) -> None:
    extra = FIT_ARGS if args[0] == "fit" else []
    print("$ nla", " ".join([*args, *extra]), flush=True)
    subprocess.run([sys.executable, "-m", "nla", *args, *extra], check=True)


def step_noisy(work: Path, protocol: str, root: str) -> None:
    target = work / "noisy.npz"
    if target.exists():
        return
    kind = {"noise_kind": "annotator", "noise_seed": 0} if protocol == "annotator" else {}
    train = RAFDBDataModule(root, protocol=LabelProtocol(noise_rate=0.3), **kind)._label("train")  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    write_label_file(work / "noisy_labels.txt", train.names, train.labels, OFFSET)
    np.savez(target, names=np.asarray(train.names), labels=train.labels, flipped=train.flipped)
    print(f"{protocol}: {int(train.flipped.sum())} of {len(train)} labels flipped")


def noisy(work: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with np.load(work / "noisy.npz") as saved:
        return list(saved["names"]), saved["labels"], saved["flipped"]


def step_folds(work: Path, root: str, folds: int) -> None:
    target = work / "oof_probs.npy"
    if target.exists():
        return
    names, labels, _ = noisy(work)
    position = {name: i for i, name in enumerate(names)}
    oof = np.full((len(names), 7), np.nan)
    for fold in range(folds):
        holdout = ["--data.holdout.num_folds", str(folds), "--data.holdout.fold", str(fold)]
        split = RAFDBDataModule(root, holdout=HoldOut(num_folds=folds, fold=fold))
        trained = [position[n] for n in split._read("train").names]
        labels_file = work / "folds" / f"fold{fold}_labels.txt"
        if not labels_file.exists():
            write_label_file(labels_file, [names[i] for i in trained], labels[trained], OFFSET)
        run = work / "folds" / f"fold{fold}"
        if not (run / "summary.json").exists():
            resume = ["--ckpt_path", "last"] if (run / "checkpoints" / "last.ckpt").exists() else []
            nla("fit", *CPU_SCALE, *CE, *holdout, "--data.root", root,
                "--data.protocol.train_label_file", str(labels_file),
                "--trainer.default_root_dir", str(run), *QUIET, *resume)  # fmt: skip
        held_names, probs = predict(run, root, "valid", num_folds=folds, fold=fold)
        oof[[position[n] for n in held_names]] = probs
    assert not np.isnan(oof).any(), "every training image is predicted by exactly one fold"
    np.save(target, oof)


def predict(run: Path, root: str, split: str, **holdout: int) -> tuple[list[str], np.ndarray]:
    checkpoint = run / "checkpoints" / "last.ckpt"
    model = NLAModule.load_from_checkpoint(checkpoint, weights_only=True, map_location="cpu").eval()
    data = RAFDBDataModule(  # no DataLoader workers: a forked worker once hung in cv2.imdecode
        root, preprocessing=Preprocessing(image_size=32), holdout=HoldOut(**holdout), num_workers=0, batch_size=256
    )
    probs = []
    with torch.no_grad():
        for batch in data.eval_dataloader(split):  # type: ignore[arg-type]
            probs.append(model(batch.image).float().softmax(1))
    return list(data.splits[split].names), torch.cat(probs).numpy()


def drop_file(work: Path, variant: str, dropped: np.ndarray) -> Path:
    names, labels, flipped = noisy(work)
    kept = np.flatnonzero(~dropped)
    path = work / "cleaned" / f"{variant}.txt"
    if not path.exists():
        write_label_file(path, [names[i] for i in kept], labels[kept], OFFSET)
        hits = int((dropped & flipped).sum())
        stats = {
            "dropped": int(dropped.sum()),
            "flipped": int(flipped.sum()),
            "precision": hits / max(int(dropped.sum()), 1),
            "recall": hits / max(int(flipped.sum()), 1),
        }
        (work / "cleaned" / f"{variant}.json").write_text(json.dumps(stats, indent=2))
        print(variant, stats)
    return path


def step_cleanlab(work: Path) -> None:
    from cleanlab.filter import find_label_issues

    _, labels, _ = noisy(work)
    drop_file(work, "cleanlab", find_label_issues(labels, np.load(work / "oof_probs.npy"), n_jobs=1))


def step_naw(work: Path, naw_run: Path, root: str) -> None:
    while not (naw_run / "summary.json").exists():  # trained by another lane: wait for it to finish
        time.sleep(60)
    names, labels, _ = noisy(work)
    for variant, suspects in (("naw", "contradicted"), ("naw_cl_count", "confident_learning")):
        if (work / "cleaned" / f"{variant}.txt").exists():
            continue
        before = {p.name for p in naw_run.glob("label-issues*")}
        nla("label-issues", "--ckpt_path", str(naw_run / "checkpoints" / "last.ckpt"), "--write_labels", "drop",
            "--suspects", suspects, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false")  # fmt: skip
        (folder,) = [p for p in naw_run.glob("label-issues*") if p.name not in before]
        kept, _, _ = read_label_file(folder / "cleaned_labels.txt", 7, OFFSET)
        drop_file(work, variant, ~np.isin(np.asarray(names), kept))
    if not (work / "cleaned" / "cleanlab_same_model.txt").exists():
        from cleanlab.filter import find_label_issues

        predicted_names, probs = predict(naw_run, root, "train")
        position = {name: i for i, name in enumerate(predicted_names)}
        probs = probs[[position[name] for name in names]]
        drop_file(work, "cleanlab_same_model", find_label_issues(labels, probs, n_jobs=1))
    with np.load(naw_run / "per_sample.npz") as record:
        last = slice(-3, None)
        weight, p_gt, predicted = record["weight"][last], record["p_gt"][last], record["predicted"][last]
        assert (record["label"][-1] == labels).all(), "the NLA run trained on these noisy labels"
    checkpoint = naw_run / "checkpoints" / "last.ckpt"
    kernels = NLAModule.load_from_checkpoint(checkpoint, weights_only=True, map_location="cpu").criterion.config.kernels
    wrong = predicted != labels[None]
    score = suspicion(p_gt, weight, ~wrong, kernels).mean(0)  # label_issues.rank's score with the run's kernels
    count = int((wrong.mean(0) > 0.5).sum())  # contradicted in most of the last three epochs
    dropped = np.zeros(len(labels), dtype=bool)
    dropped[np.argsort(-score, kind="stable")[:count]] = True
    drop_file(work, "naw_last3", dropped)


def step_retrain(work: Path, root: str, seeds: list[int], variants: list[str]) -> None:
    for variant in variants:
        labels_file = work / "noisy_labels.txt" if variant == "none" else work / "cleaned" / f"{variant}.txt"
        if not labels_file.exists():
            print(f"{variant}: no {labels_file.name} yet")
            continue
        for seed in seeds:
            run = work / "retrain" / variant / f"seed{seed}"
            if (run / "summary.json").exists():
                continue
            resume = ["--ckpt_path", "last"] if (run / "checkpoints" / "last.ckpt").exists() else []
            try:
                where = ["--seed_everything", str(seed), "--trainer.default_root_dir", str(run)]
                nla("fit", *CPU_SCALE, *CE, "--data.root", root, "--data.protocol.train_label_file", str(labels_file),
                    *where, *QUIET, *resume)  # fmt: skip
            except subprocess.CalledProcessError:  # said in the run's output; the other variants go on
                print(f"{variant} seed {seed}: the fit failed", flush=True)


def step_report(work_root: Path, out: Path) -> None:
    results: dict = {}
    for work in sorted(p for p in work_root.iterdir() if (p / "noisy.npz").exists()):
        protocol = work.name
        entry: dict = {"cleaning": {}, "retrained": {}}
        for variant in VARIANTS[1:]:
            stats = work / "cleaned" / f"{variant}.json"
            if stats.exists():
                entry["cleaning"][variant] = json.loads(stats.read_text())
        for variant in VARIANTS:
            for summary in sorted((work / "retrain" / variant).glob("seed*/summary.json")):
                saved = json.loads(summary.read_text())
                last = saved["last"]
                entry["retrained"].setdefault(variant, {})[summary.parent.name] = [last["acc"], last["mean_acc"]]
                entry.setdefault("environment", saved.get("environment"))  # every retrain ran on the same machine
        results[protocol] = entry
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Clean, then retrain CE (RAF-DB, 30% noise, CPU scale): last-epoch test accuracy", ""]
    lines += [
        "| noise | cleaning | dropped | precision | recall | overall | mean | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol, entry in results.items():
        for variant in VARIANTS:
            runs = entry["retrained"].get(variant, {})
            stats = entry["cleaning"].get(variant, {})
            cells = [
                f"{stats['dropped']}" if stats else "0",
                f"{100 * stats['precision']:.1f}" if stats else "—",
                f"{100 * stats['recall']:.1f}" if stats else "—",
                spread([100 * v[0] for v in runs.values()]),
                spread([100 * v[1] for v in runs.values()]),
                str(len(runs)),
            ]
            lines.append(f"| {protocol} | {variant} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["noisy", "folds", "cleanlab", "naw", "retrain", "all", "report"])
    parser.add_argument("--protocol", choices=list(PROTOCOLS))
    parser.add_argument("--data-root")
    parser.add_argument("--work", required=True, help="a folder for this study's runs, e.g. runs/cleaning")
    parser.add_argument("--naw-run", help="the from-scratch NLA run on the same noisy labels")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="which to retrain")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--fit-args", default="", help="more arguments for every nla fit, e.g. a smoke test's")
    args = parser.parse_args()
    FIT_ARGS.extend(shlex.split(args.fit_args))
    if args.step == "report":
        step_report(Path(args.work), Path(args.out))
        return
    work = Path(args.work) / args.protocol
    steps = ["noisy", "folds", "cleanlab", "naw", "retrain"] if args.step == "all" else [args.step]
    for step in steps:
        if step == "noisy":
            step_noisy(work, args.protocol, args.data_root)
        elif step == "folds":
            step_folds(work, args.data_root, args.folds)
        elif step == "cleanlab":
            step_cleanlab(work)
        elif step == "naw":
            step_naw(work, Path(args.naw_run), args.data_root)
        elif step == "retrain":
            step_retrain(work, args.data_root, args.seeds, args.variants)


if __name__ == "__main__":
    main()

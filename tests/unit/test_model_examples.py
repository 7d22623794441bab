"""`mlrollout examples`: good versions agree, the bad one drifts and errs, traffic replays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlrollout.services.cli import main as cli_main
from mlrollout.services.model.dataplane import Dataplane


def test_examples_write_two_good_versions_and_one_bad(tmp_path: Path) -> None:
    assert cli_main(["examples", str(tmp_path), "--tar"]) == 0
    traffic = [json.loads(line) for line in (tmp_path / "traffic.jsonl").read_text().splitlines()]
    assert len(traffic) == 2000
    body = json.dumps([t["record"] for t in traffic[:1000]]).encode()
    labels = np.array([t["label"] for t in traffic[:1000]])
    answers = {}
    for version in ("v1", "v2", "v3"):
        dp = Dataplane.from_artifact(
            tmp_path / f"{version}.tar.gz",
            deployment="fraud",
            track="stable",
            cache_dir=tmp_path / "c",
        )
        reply = dp.predict(body, None)
        assert reply.status == 200
        answers[version] = np.array(reply.payload["predictions"])
        card = json.loads((tmp_path / version / "model.json").read_text())
        # The card's accuracy is sklearn's on all 2,000 held-out rows; this is ONNX on half.
        assert abs(card["metrics"]["accuracy"] - np.mean(answers[version] == labels)) < 0.03
    accuracy = {v: float(np.mean(a == labels)) for v, a in answers.items()}
    positive = {v: float(a.mean()) for v, a in answers.items()}
    assert accuracy["v1"] > 0.85 and accuracy["v2"] > 0.85
    assert accuracy["v3"] < accuracy["v1"] - 0.05
    assert abs(positive["v1"] - positive["v2"]) < 0.05
    assert positive["v3"] < positive["v1"] - 0.1  # prediction drift against stable
    sums = (tmp_path / "SHA256SUMS").read_text().split()
    assert sums[1::2] == ["v1.tar.gz", "v2.tar.gz", "v3.tar.gz"]

"""Feedback: true labels for 200 earlier requests give the sensitivity and specificity scikit-learn gives."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, recall_score

from histoedge.cli import main
from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from tests.serving.helpers import sample_images
from tests.support.model_packages import write_model_version


def test_feedback_for_200_requests_matches_scikit_learn(tmp_path, start_server, capsys):
    write_model_version(tmp_path, "tiny", 1)
    server = start_server(tmp_path, feedback_window=500)
    images = sample_images(200, seed=11)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    predicted = []
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        ids = []
        for i in range(200):
            request_id = f"slide-7/tile-{i}" if i % 2 else ""  # odd: our id; even: the server's
            outputs, _ = client.infer([Tensor("image", "UINT8", images[i:i + 1])], "tiny",
                                      request_id=request_id, outputs=("label",))
            ids.append(client.last_id)
            predicted.append(int(outputs["label"][0] == b"malignant"))
        assert ids[1] == "slide-7/tile-1" and len(set(ids)) == 200
        for i in range(199):
            result = client.feedback(ids[i], ("benign", "malignant")[truth[i]])
            assert result.correct == (predicted[i] == truth[i]) and result.model_version == "1"
        with pytest.raises(grpc.RpcError) as error:
            client.feedback("never-sent", "benign")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as error:
            client.feedback(ids[199], "carcinoma")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as error:
            client.feedback(ids[0], "benign", index=1)  # a one-image request has no image 1
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # the 200th label through the command line
    assert main(["feedback", "--server", f"127.0.0.1:{server.port}", ids[199],
                 ("benign", "malignant")[truth[199]]]) == 0
    assert "200 labelled outcomes" in capsys.readouterr().out
    value = lambda name: server.metrics.registry.get_sample_value(name, {"model": "tiny", "version": "1"})
    assert 0 < sum(predicted) < 200 and 0 < truth.sum() < 200  # both classes, so both rates exist
    assert value("histoedge_feedback_labels") == 200
    assert value("histoedge_feedback_sensitivity") == pytest.approx(recall_score(truth, predicted, pos_label=1))
    assert value("histoedge_feedback_specificity") == pytest.approx(recall_score(truth, predicted, pos_label=0))
    assert value("histoedge_feedback_accuracy") == pytest.approx(accuracy_score(truth, predicted))
    reports = lambda outcome: server.metrics.registry.get_sample_value(
        "histoedge_feedback_reports_total", {"outcome": outcome})
    assert (reports("recorded"), reports("unknown_id"), reports("bad_label")) == (200, 2, 1)
    assert main(["feedback", "--server", f"127.0.0.1:{server.port}", "nope", "benign"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err

"""The feature map's queries: the most similar images to one, and a selection exported as images and a table."""

import io
import zipfile

import numpy as np
import pandas as pd
import torch
from PIL import Image

from diffood.featuremap import most_similar, selection_archive


def test_the_most_similar_are_the_nearest_by_cosine_nearest_first_and_never_the_image_itself():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 16))
    near = most_similar(points, 7, 10)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    distance = 1 - unit @ unit[7]
    expected = [j for j in np.argsort(distance) if j != 7][:10]
    assert near.tolist() == expected
    scaled = points.copy()
    scaled[expected[0]] *= 50  # cosine: a point's length does not move it
    assert most_similar(scaled, 7, 1).tolist() == [expected[0]]
    assert len(most_similar(points[:4], 0, 10)) == 3  # at most every other point


def test_a_selection_exports_its_images_and_their_scores():
    table = pd.DataFrame({"set": ["mnist", "mnist", "bank"], "index": [3, 9, 41], "score": [2.5, -0.1, np.nan],
                          "verdict": ["likely OOD", "in-distribution", ""]})
    images = [torch.full((1, 28, 28), 200, dtype=torch.uint8), None, torch.zeros((1, 28, 28), dtype=torch.uint8)]
    with zipfile.ZipFile(io.BytesIO(selection_archive(table, images))) as z:
        assert sorted(z.namelist()) == ["bank-41.png", "mnist-3.png", "selection.csv"]
        with Image.open(z.open("mnist-3.png")) as png:
            assert png.size == (28, 28) and np.asarray(png).min() == 200
        listed = pd.read_csv(z.open("selection.csv"), keep_default_na=False)
    assert listed["file"].tolist() == ["mnist-3.png", "", "bank-41.png"]  # the one not at hand is listed, no file
    assert listed["score"].tolist()[:2] == ["2.5", "-0.1"] and listed["index"].tolist() == [3, 9, 41]

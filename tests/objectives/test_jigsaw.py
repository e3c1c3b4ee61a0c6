"""Jigsaw: the permutation set keeps its promised minimum Hamming distance, each slot of a puzzle holds the tile of
the cell its permutation names (with gap and jitter), and a gap that leaves tiles too small is a clear error."""

from __future__ import annotations

import pytest
import torch
from image_ssl_recipes import image_objective

from mmssl.errors import RecipeError
from mmssl.objectives.jigsaw import GRID, cut_tiles, min_hamming_distance, permutation_set


def test_jigsaw_permutation_set_keeps_its_promised_hamming_distance():
    nine = permutation_set(9)
    assert min_hamming_distance(nine) == 9  # 9 permutations can differ in every position
    hundred = permutation_set(100)
    assert hundred.shape == (100, 9) and min_hamming_distance(hundred) >= 6
    assert all(sorted(row) == list(range(9)) for row in hundred.tolist())
    assert len({tuple(row) for row in hundred.tolist()}) == 100
    assert (permutation_set(100, seed=0) == hundred).all() and (permutation_set(100, seed=1) != hundred).any()


def test_jigsaw_slot_j_holds_the_tile_of_the_cell_its_permutation_names(tmp_path):
    obj = image_objective(tmp_path, "jigsaw", permutations=10, gap=0)  # no gap: tiles are exactly the grid cells
    torch.manual_seed(0)
    images = torch.rand(6, 3, 15, 15)
    tiles, labels = obj.puzzle(images)
    assert tiles.shape == (6, 9, 3, 5, 5) and labels.shape == (6,)
    for b in range(6):
        order = obj.perms[labels[b]].tolist()
        for slot, cell in enumerate(order):
            r, c = divmod(cell, GRID)
            assert torch.equal(tiles[b, slot], images[b, :, 5 * r : 5 * r + 5, 5 * c : 5 * c + 5])
    assert len(set(labels.tolist())) > 1
    gapped = image_objective(tmp_path / "g", "jigsaw", permutations=10, gap=1)
    assert gapped.puzzle(images)[0].shape == (6, 9, 3, 4, 4)
    jitter = torch.randint(2, (6, 9, 2))  # tiles of 4 in cells of 5: each starts 0 or 1 px into its cell
    tiles = cut_tiles(images, 4, jitter)
    for b in range(6):
        for cell in range(9):
            y, x = 5 * (cell // GRID) + int(jitter[b, cell, 0]), 5 * (cell % GRID) + int(jitter[b, cell, 1])
            assert torch.equal(tiles[b, cell], images[b, :, y : y + 4, x : x + 4])
    with pytest.raises(RecipeError, match="leaves tiles under 4 px"):
        image_objective(tmp_path / "h", "jigsaw", permutations=10, gap=2)  # 16 px: cells of 5, tiles of 3

"""The exact search inside an exported graph: chunked along the queries, right for every batch size."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from mvtec_ad.search.nearest import nearest_neighbours

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")


class Search(nn.Module):
    """Queries [B, Q, D] -> nearest distances and rows in a fixed bank, in chunks of a few queries."""

    def __init__(self, bank: torch.Tensor, chunk_elements: int) -> None:
        super().__init__()
        self.register_buffer("bank", bank)
        self.chunk_elements = chunk_elements

    def forward(self, queries: torch.Tensor):
        return nearest_neighbours(queries, self.bank, 1, chunk_elements=self.chunk_elements)


def test_a_traced_chunked_search_gives_every_batch_size_its_own_answer():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 16, generator=generator)
    # 300 bank rows x 7 queries a chunk: 50 queries need 8 chunks, whatever the batch
    module = Search(bank, chunk_elements=300 * 7).eval()
    graph = io.BytesIO()
    example = torch.randn(2, 50, 16, generator=generator)
    torch.onnx.export(
        module, (example,), graph, dynamo=False, input_names=["q"], output_names=["d", "i"],
        dynamic_axes={"q": {0: "batch"}},
    )  # fmt: skip
    session = ort.InferenceSession(graph.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 2, 3):
        queries = torch.randn(batch, 50, 16, generator=generator)
        distances, rows = session.run(None, {"q": queries.numpy()})
        expected = torch.cdist(queries, bank).min(-1)
        assert distances.shape == (batch, 50, 1)
        np.testing.assert_allclose(distances[..., 0], expected.values.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(rows[..., 0], expected.indices.numpy())

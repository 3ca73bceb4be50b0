"""Parameters as the unit of compression: bare parameters (attention's fused QKV weight),
transposed layouts (GPT-2's Conv1D), and exact counts on real transformer blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from admmcompress import ADMM, Filter, Irregular, MaskEnforcer, compressible_targets
from admmcompress.constraints import Channel, ConstraintError, Uniform
from admmcompress.constraints.nm import NM
from admmcompress.core.selection import SelectionError, coverage, select_layers
from admmcompress.core.verify import model_violations
from admmcompress.formats.admmz import read_admmz, save_admmz
from admmcompress.run.report import layer_table, pruning_rates


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


QKV = "layers.0.self_attn.in_proj_weight"


def test_bare_parameters_are_compressible_and_named_in_full() -> None:
    names = list(compressible_targets(encoder()))
    assert names == [
        "layers.0.self_attn.in_proj_weight",
        "layers.0.self_attn.out_proj",
        "layers.0.linear1",
        "layers.0.linear2",
        "layers.1.self_attn.in_proj_weight",
        "layers.1.self_attn.out_proj",
        "layers.1.linear1",
        "layers.1.linear2",
    ]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (QKV, [QKV]),  # exact name
        ("*.in_proj_weight", [QKV, "layers.1.self_attn.in_proj_weight"]),  # glob
        ("layers.0.self_attn", [QKV]),  # the module's own parameters
        ("type:MultiheadAttention", [QKV, "layers.1.self_attn.in_proj_weight"]),
        ("layers.0.linear1.weight", ["layers.0.linear1"]),  # a layer's weight by its full name
    ],
)
def test_selectors_reach_bare_parameters(selector: str, expected: list[str]) -> None:
    assert list(select_layers(encoder(), {selector: 1})) == expected


def test_star_covers_every_parameter_and_coverage_says_what_is_left() -> None:
    model = encoder()
    everything = select_layers(model, {"*": 1})
    assert len(everything) == 8
    covered, left = coverage(model, select_layers(model, {"*.linear*": 1}))
    assert len(covered) == 4 and QKV in left


def test_a_selector_that_matches_nothing_lists_the_parameters() -> None:
    with pytest.raises(SelectionError, match=r"in_proj_weight.*'\*\.in_proj_weight'"):
        select_layers(encoder(), {"*.q_proj": 1})


def test_admm_prunes_attention_to_exact_counts_and_retraining_keeps_them() -> None:
    model = encoder()
    rules = {"*.in_proj_weight": Irregular(keep=0.1), "*.linear*": NM(n=2, m=4)}
    admm = ADMM(model, rules, rho=0.05)
    x = torch.randn(8, 5, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model(x).pow(2).mean() + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        admm.update()
    masks = admm.harden()
    assert int(masks[QKV].sum()) == round(0.1 * 48 * 16)
    MaskEnforcer.for_layers(model, masks).attach(opt)
    for _ in range(3):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    constraints = {n: layer.constraint for n, layer in admm.layers.items()}
    assert model_violations(model, constraints, masks) == []
    rows = {r["name"]: r for r in layer_table(model, constraints, masks)}
    assert rows[QKV]["nonzero"] == round(0.1 * 48 * 16) and rows[QKV]["type"] == (
        "MultiheadAttention"
    )
    assert pruning_rates(list(rows.values()))["pruning_rate"] > 3


def test_an_admmz_file_stores_bare_parameters_as_weights(tmp_path: Path) -> None:
    model = encoder()
    ADMM(model, {"*.in_proj_weight": Irregular(keep=0.05)}).harden()
    from admmcompress.models import registry

    registry._MODELS._items.setdefault("tiny_encoder", encoder)
    try:
        summary = save_admmz(tmp_path / "e.admmz", model, model_name="tiny_encoder", model_args={})
        rows = {r["name"]: r for r in summary.rows}
        assert rows[QKV]["weight"] and rows[QKV]["nnz"] == round(0.05 * 48 * 16)
        back = read_admmz(tmp_path / "e.admmz").model
        for key, value in model.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key
    finally:
        registry._MODELS._items.pop("tiny_encoder", None)


transformers = pytest.importorskip("transformers")


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2Model(config)


def test_gpt2_conv1d_filters_are_its_output_features() -> None:
    model = gpt2()
    w = model.h[0].mlp.c_fc.weight  # Conv1D: [in 16, out 64]
    assert tuple(w.shape) == (16, 64)
    targets = compressible_targets(model)
    assert targets["h.0.mlp.c_fc"].transposed and not targets["wte"].transposed
    masks = ADMM(
        model, {"h.0.mlp.c_fc": Filter(keep=0.25), "h.0.mlp.c_proj": Channel(keep=0.25)}
    ).harden()
    kept_outputs = (w != 0).any(dim=0)  # one column per output feature
    assert int(kept_outputs.sum()) == 16 and bool((w[:, ~kept_outputs] == 0).all())
    proj = model.h[0].mlp.c_proj.weight  # [in 64, out 16]: channels are its rows
    assert int((proj != 0).any(dim=1).sum()) == 16
    assert int(masks["h.0.mlp.c_fc"].sum()) == 16 * 16


def test_gpt2_nm_groups_run_along_its_inputs() -> None:
    model = gpt2()
    ADMM(model, {"h.0.attn.c_attn": NM(n=2, m=4)}).harden()
    w = model.h[0].attn.c_attn.weight  # [in 16, out 48]
    groups = (w.t().reshape(48, 4, 4) != 0).sum(dim=2)  # 4 consecutive inputs per output
    assert int(groups.max()) <= 2


def test_per_channel_quantization_of_a_transposed_weight_is_refused() -> None:
    with pytest.raises(ConstraintError, match="stored \\[in, out\\]"):
        ADMM(gpt2(), {"h.0.mlp.c_fc": Uniform(bits=4, per_channel=True)})
    ADMM(gpt2(), {"h.0.mlp.c_fc": Uniform(bits=4)}).harden()  # one scale: any layout


def test_tiny_bert_from_a_config_compresses_every_linear_exactly() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.BertModel(config)
    admm = ADMM(model, {"type:Linear": Irregular(keep=0.2)})
    masks = admm.harden()
    assert len(masks) == 2 * 6 + 1  # q, k, v, attention output, intermediate, output; pooler
    for name, mask in masks.items():
        numel = admm.layers[name].weight.numel()
        assert int(mask.sum()) == round(0.2 * numel), name
    ids = torch.randint(0, 50, (2, 7))
    assert model(input_ids=ids).last_hidden_state.shape == (2, 7, 16)

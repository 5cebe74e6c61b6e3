"""One conformance suite over every preset, plus numerics against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from cvae.conditions import Attribute, ConditionSchema
from cvae.distributions import Bernoulli, DiagonalGaussian, Gaussian
from cvae.errors import CvaeError
from cvae.models import CVAE, MODELS, PRESETS, ModelConfig, build_model
from cvae.objectives import elbo, iwae, iwae_bound
from cvae.runs import load_tensors, save_tensors

SCHEMA = ConditionSchema([Attribute("label", "categorical", [str(i) for i in range(4)])])
SHAPES = [(1, 28, 28), (3, 13, 9), (1, 8, 8)]


def make(preset: str, shape=(1, 28, 28), schema=SCHEMA, **over) -> CVAE:
    """The model a preset builds (its own model class: the hierarchical one for hvae)."""
    torch.manual_seed(0)
    settings = {**PRESETS[preset], **over}
    config_class = MODELS.get(settings.get("model_class", "cvae")).config_class
    return build_model(config_class(data_shape=shape, schema=schema.to_dict(), **settings))


def batch(shape, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.arange(n).remainder(4).float().unsqueeze(1)
    return x, y, SCHEMA.encode(y)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(preset, shape):
    if preset == "hvae" and shape[1] % 4:
        pytest.skip("the hierarchical model's ladder halves the image twice (tests/test_hvae.py checks the refusal)")
    model = make(preset, shape)
    x, y, c = batch(shape)
    out = model(x, c)
    latent = model.config.latent_dim
    assert out.qz.mu.shape == (16, latent) and out.z.shape == (16, latent)
    assert out.px.mean.shape == x.shape
    assert model.sample(5, "label=2").shape == (5, *shape)
    assert model.reconstruct(x, y).shape == x.shape
    assert model.encode(x, y).mu.shape == (16, latent)
    assert model.decode(torch.zeros(3, latent), "label=1").shape == (3, *shape)


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p != "hvae"))  # hvae: tests/test_hvae.py
def test_training_steps_lower_the_loss(preset):
    model = make(preset)
    x, _, c = batch((1, 28, 28), n=64)
    x = (x > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    first = elbo(model, x, c).loss.item()
    for _ in range(20):
        opt.zero_grad()
        elbo(model, x, c).loss.backward()
        opt.step()
    torch.manual_seed(1)
    assert elbo(model, x, c).loss.item() < first - 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_save_load_round_trip_is_exact(preset, tmp_path):
    # the hierarchical model's prior is its own top-down pass
    model = make(preset, likelihood="gaussian-learned", **({} if preset == "hvae" else {"prior": "conditional"}))
    save_tensors(tmp_path / "m.safetensors", model.state_dict())
    again = build_model(model.config.to_dict())
    again.load_state_dict(load_tensors(tmp_path / "m.safetensors"))
    x, _, c = batch((1, 28, 28))
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    l1 = elbo(model, x, c).loss
    torch.manual_seed(3)
    assert torch.equal(l1, elbo(again, x, c).loss)


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.randn(4, 6), torch.randn(4, 6) * 0.5)
    p = DiagonalGaussian(torch.randn(4, 6), torch.randn(4, 6) * 0.5)
    z = q.rsample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(q.kl(p), mc, atol=0.03)
    mc0 = (q.log_prob(z) - DiagonalGaussian(torch.zeros(6), torch.zeros(6)).log_prob(z)).mean(0)
    assert torch.allclose(q.kl(None), mc0, atol=0.03)
    assert torch.allclose(q.kl_per_dim(p).sum(-1), q.kl(p), atol=1e-5)


def test_log_probs_match_torch_distributions():
    torch.manual_seed(0)
    mu, logvar, z = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(DiagonalGaussian(mu, logvar).log_prob(z), ref, atol=1e-5)
    logits, x = torch.randn(5, 1, 4, 4), torch.randint(0, 2, (5, 1, 4, 4)).float()
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(Bernoulli(logits, 3).log_prob(x), ref, atol=1e-5)
    loc, ls, x = torch.randn(5, 7), torch.randn(7) * 0.3, torch.randn(5, 7)
    ref = torch.distributions.Normal(loc, ls.exp()).log_prob(x).sum(-1)
    assert torch.allclose(Gaussian(loc, ls, 1).log_prob(x), ref, atol=1e-5)


def test_beta_zero_is_the_autoencoder_objective():
    model = make("mlp-400")
    x, _, c = batch((1, 28, 28))
    torch.manual_seed(5)
    out = elbo(model, x, c, beta=0.0)
    assert out.kl.item() > 0
    assert torch.allclose(out.loss, out.reconstruction)
    # the gradient then reaches no KL term: the encoder's log-variance head gets only reconstruction gradients
    torch.manual_seed(5)
    full = elbo(model, x, c, beta=1.0)
    assert full.loss.item() > out.loss.item()


def test_beta_scales_the_kl_term():
    model = make("mlp-400")
    x, _, c = batch((1, 28, 28))
    torch.manual_seed(2)
    a = elbo(model, x, c, beta=4.0)
    assert torch.allclose(a.loss, a.reconstruction + 4.0 * a.kl)


def test_condition_changes_the_output():
    model = make("textbook")
    z = torch.randn(3, model.config.latent_dim)
    assert not torch.allclose(model.decode(z, "label=0"), model.decode(z, "label=3"))
    conv = make("conv")
    z = torch.randn(3, conv.config.latent_dim)
    assert not torch.allclose(conv.decode(z, "label=0"), conv.decode(z, "label=3"))


def test_condition_at_every_layer():
    """--condition-at -1: each linear layer of encoder and decoder reads the condition."""
    model = make("mlp-400", condition_at=-1, hidden=[32, 16])
    for net in (model.encoder.net, model.decoder.net):
        cond = net.cond_dim
        assert cond > 0 and all(net.joins)
        inputs = [layer.in_features for layer in net.layers]
        plain = [net.layers[0].in_features - cond] + [layer.out_features for layer in net.layers[:-1]]
        assert inputs == [p + cond for p in plain]
    z = torch.randn(3, model.config.latent_dim)
    assert not torch.allclose(model.decode(z, "label=0"), model.decode(z, "label=3"))
    x = torch.rand(4, 1, 28, 28)
    assert model.reconstruct(x, "label=1").shape == x.shape


def test_plain_vae_has_no_condition():
    model = make("mlp-400", schema=ConditionSchema())
    x = torch.rand(4, 1, 28, 28)
    assert model.reconstruct(x).shape == x.shape
    with pytest.raises(CvaeError, match="plain VAE"):
        model.sample(2, "label=3")


def test_conditional_prior_starts_standard_and_is_used():
    model = make("mlp-400", prior="conditional")
    _, _, c = batch((1, 28, 28))
    mean, _ = model.prior.spread(c, len(c))
    assert torch.equal(mean, torch.zeros_like(mean))
    with torch.no_grad():
        model.prior.net.bias[:model.config.latent_dim] = 5.0
    mean, _ = model.prior.spread(c, len(c))
    assert torch.allclose(mean, torch.full_like(mean, 5.0))


def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    model = make("mlp-400")
    x, _, c = batch((1, 28, 28), n=4)
    torch.manual_seed(0)
    k1 = torch.stack([iwae_bound(model, x, c, k=1) for _ in range(400)]).mean(0)
    torch.manual_seed(1)
    neg = torch.stack([elbo(model, x[i:i + 1], c[i:i + 1]).neg_elbo for i in range(4) for _ in range(400)])
    assert torch.allclose(k1, -neg.reshape(4, 400).mean(1), atol=0.6)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_iwae_objective_is_the_importance_weighted_bound(prior):
    """The training objective equals -iwae_bound on the same draws; with k = 1 it is the ELBO's loss."""
    model = make("mlp-400", prior=prior)
    with torch.no_grad():
        if prior == "conditional":
            model.prior.net.bias.normal_()
    x, _, c = batch((1, 28, 28), n=6)
    torch.manual_seed(3)
    loss = iwae(model, x, c, k=7)
    torch.manual_seed(3)
    bound = iwae_bound(model, x, c, k=7, chunk=7)
    assert torch.allclose(loss.loss, -bound.mean(), rtol=1e-5)
    xr, cr = x.repeat(300, 1, 1, 1), c.repeat(300, 1)
    torch.manual_seed(4)
    one = iwae(model, xr, cr, k=1)
    torch.manual_seed(4)
    ref = elbo(model, xr, cr)
    assert torch.allclose(one.reconstruction, ref.reconstruction) and torch.allclose(one.kl, ref.kl)
    # with k = 1 the loss's KL part is the one-sample Monte Carlo KL: the analytic KL in expectation
    assert abs(float(one.loss - one.reconstruction) - float(ref.kl)) < 0.03 * float(ref.kl) + 0.1
    loss.loss.backward()  # gradients reach encoder, decoder and prior
    assert all(p.grad is not None for p in model.parameters())


def test_bad_settings_are_errors():
    with pytest.raises(CvaeError, match="unknown likelihood"):
        ModelConfig(data_shape=(4,), likelihood="poisson")
    with pytest.raises(CvaeError, match="conv network needs images"):
        CVAE(ModelConfig(data_shape=(10,), arch="conv"))
    with pytest.raises(CvaeError, match="unknown value"):
        make("mlp-400").sample(2, "label=9")
    with pytest.raises(CvaeError, match="expects"):
        make("mlp-400").reconstruct(torch.rand(2, 30), "label=1")
    with pytest.raises(CvaeError, match="NaN"):
        make("mlp-400").reconstruct(torch.full((2, 1, 28, 28), math.nan), "label=1")


def test_prior_auto_is_conditional_only_with_a_condition():
    assert ModelConfig(data_shape=(4,), schema=SCHEMA.to_dict()).prior == "conditional"
    assert ModelConfig(data_shape=(4,)).prior == "standard"
    assert ModelConfig.from_dict(ModelConfig(data_shape=(4,), schema=SCHEMA.to_dict()).to_dict()).prior == "conditional"


def test_inputs_in_any_layout_a_user_holds_give_the_same_codes():
    # channel-last images were reshaped (not transposed) into scrambled pixels, and uint8 pixels were read
    # as values 0..255: both silently wrong codes
    model = make("textbook", shape=(3, 6, 5)).eval()
    x, y, _ = batch((3, 6, 5), n=4)
    x = (x * 255).round() / 255  # 8-bit grey levels, so that uint8 is the same data
    want = model.encode(x, y).mu
    np_hwc = x.permute(0, 2, 3, 1).numpy()
    for same in (np_hwc, torch.from_numpy(np_hwc), (x * 255).round().to(torch.uint8), (np_hwc * 255).round().astype("uint8"),
                 x.reshape(4, -1).double()):
        assert torch.allclose(model.encode(same, y).mu, want, atol=1e-5)
    assert torch.allclose(model.encode(x[0], y[:1]).mu, want[:1], atol=1e-5)  # one example, no batch axis
    assert torch.allclose(model.encode(x.numpy() * 255, y).mu, want, atol=1e-5)  # floats in 0..255, as training reads them
    rounded = x.clone()
    rounded[0, 0, 0, 0], rounded[1, 0, 0, 0] = -1e-7, 1 + 1e-7  # a rounding away from [0, 1]: clipped, not refused
    assert torch.isfinite(model.encode(rounded, y).mu).all()
    masks = (x > 0.5).to(torch.uint8)  # 0/1 masks as bytes: read as 0/1, as training reads them (not / 255)
    assert torch.allclose(model.encode(masks, y).mu, model.encode(masks.float(), y).mu)
    grey = make("textbook", shape=(1, 8, 8)).eval()
    g, yg, _ = batch((1, 8, 8), n=4)
    assert torch.allclose(grey.encode(g[:, 0], yg).mu, grey.encode(g, yg).mu)  # no channel axis
    big = torch.nn.functional.interpolate(g, size=(16, 16), mode="nearest")  # another size: resized, as the CLI does
    assert grey.encode(big, yg).mu.shape == (4, grey.config.latent_dim)


@pytest.mark.parametrize("call, fragment", [
    (lambda m, x, y: m.encode(x.reshape(4, 6, 15), y), "expects (N, 3, 6, 5) or flat rows (N, 90) or channel-last"),
    (lambda m, x, y: m.encode(x * 1000, y), "grey levels in [0, 1]"),
    (lambda m, x, y: m.encode(x - 0.5, y), "grey levels in [0, 1]"),
    (lambda m, x, y: m.encode(None, y), "an array of numbers"),
    (lambda m, x, y: m.reconstruct(x, y[:2]), "2 rows but there are 4 examples"),
    (lambda m, x, y: m.sample(3, torch.tensor([[1.0], [1.0]])), "2 rows but there are 3"),
    (lambda m, x, y: m.sample(2, torch.tensor([[7.0], [1.0]])), "holds 7; a categorical condition's column holds class indices 0..3"),
    (lambda m, x, y: m.sample(2, torch.tensor([[2.5], [1.0]])), "holds 2.5"),
    (lambda m, x, y: m.sample(2, {"label": True}), "unknown value 'True'"),
    (lambda m, x, y: m.sample(-3), "at least 1, got -3"),
    (lambda m, x, y: m.sample(2.5), "the number of samples must be a whole number of at least 1, got 2.5"),
    (lambda m, x, y: m.sample(True), "at least 1, got True"),
    (lambda m, x, y: m.sample(torch.tensor(0)), "at least 1, got 0"),
    (lambda m, x, y: m.sample(10**13), "draw them in batches"),
    (lambda m, x, y: m.decode(torch.full((2, m.config.latent_dim), math.nan), "label=1"), "NaN or infinite"),
    (lambda m, x, y: m.decode(torch.zeros(2, m.config.latent_dim + 1), "label=1"), "have shape (2, 3); this model decodes (N, 2) codes"),
    (lambda m, x, y: m.classify(x, samples=0), "samples must be a whole number of at least 1, got 0"),
    (lambda m, x, y: m.classify(x, batch_size=-1), "batch_size must be"),
])
def test_python_api_misuse_is_one_clear_error(call, fragment):
    model = make("textbook", shape=(3, 6, 5)).eval()
    x, y, _ = batch((3, 6, 5), n=4)
    with pytest.raises(CvaeError) as e:
        call(model, x, y)
    assert fragment in str(e.value), str(e.value)


def test_bayes_rule_classification_of_a_row_does_not_depend_on_the_rows_beside_it():
    """One set of draws for every row and class: a row's class probabilities are the same alone, in its
    batch or in smaller batches (each row's draws depended on its position), and another seed draws anew."""
    model = make("textbook", shape=(1, 8, 8)).eval()
    x, _, _ = batch((1, 8, 8), n=9)
    whole = model.classify(x)
    torch.testing.assert_close(model.classify(x[4:5]), whole[4:5])
    torch.testing.assert_close(model.classify(x, batch_size=2), whole)
    assert not torch.allclose(model.classify(x, seed=1), whole)


def test_conditions_as_tensors_and_whole_floats_are_read_as_values():
    model = make("textbook", shape=(1, 8, 8)).eval()
    g = torch.Generator()
    a = model.sample(2, {"label": torch.tensor([3, 1])}, generator=g.manual_seed(0))
    b = model.sample(2.0, {"label": [3, 1]}, generator=g.manual_seed(0))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)
    assert model.sample(torch.tensor(3), {"label": torch.tensor(2)}).shape == (3, 1, 8, 8)  # 0-d tensors: one value


def test_a_class_name_with_a_comma_is_asked_for_in_quotes():
    # a class folder named 'x,y' trained, but --condition label=x,y split at its comma
    from cvae.conditions import parse_assignments

    assert parse_assignments('label="x,y",size=3') == {"label": "x,y", "size": "3"}
    assert parse_assignments("label='a,b'") == {"label": "a,b"}
    assert parse_assignments("name=O'Brien,size=3") == {"name": "O'Brien", "size": "3"}  # an apostrophe is a letter
    assert parse_assignments("cls='90s,size=0.5") == {"cls": "'90s", "size": "0.5"}  # a quote never closed too
    schema = ConditionSchema([Attribute("label", "categorical", ["x,y", "z"])])
    assert schema.parse('label="x,y"').tolist() == [[0.0]]


def test_a_number_names_a_class_it_is_not_an_index_into_numbered_classes():
    # label=0 on a run with classes 1, 2, 5 silently gave class '1' (index 0)
    numbered = Attribute("label", "categorical", ["1", "2", "5"])
    with pytest.raises(CvaeError, match="unknown value '0'"):
        numbered.code(0)
    assert numbered.code(5) == 2.0 and numbered.code("2") == 1.0
    assert Attribute("label", "categorical", ["cat", "dog"]).code(1) == 1.0  # named classes: an index still works

"""utils.diffusion: the noise schedules, q(x_t | x_0), the DDPM and DDIM steps and their timesteps equal
diffusers' DDPMScheduler and DDIMScheduler on the same inputs (1e-6); a whole guided DDIM sampling loop
equals the loop diffusers' pipelines run; classifier-free guidance equals diffusers' ClassifierFreeGuidance
guider and the pipelines' formula; the timestep embedding equals diffusers' get_timestep_embedding; the
loss is DDPM's eq. 14 written out (and its x_0 form, whose steps equal diffusers' prediction_type="sample"); the denoiser's null caption and masks do what they say; chapter 9's
text features are CLIP's; bad input fails clearly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding
from torch.overrides import TorchFunctionMode

from utils import diffusion as Df
from utils import transformer as X
from utils.clip import CLIP, CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from weights import scramble_

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(atol=1e-6, rtol=1e-6)
SCHEDULES = [  # ours, diffusers' config
    (dict(), dict(beta_schedule="linear")),
    (dict(num_train_timesteps=50, beta_start=1e-3, beta_end=0.05), dict(num_train_timesteps=50, beta_start=1e-3,
                                                                         beta_end=0.05, beta_schedule="linear")),
    (dict(schedule="cosine"), dict(beta_schedule="squaredcos_cap_v2")),
]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def images(B=3, seed=0):
    return randn(B, 3, 8, 8, seed=seed)


@pytest.mark.parametrize("ours,theirs", SCHEDULES)
def test_schedule_equals_diffusers(ours, theirs):
    s, ref = Df.NoiseSchedule(**ours), DDPMScheduler(**theirs)
    torch.testing.assert_close(s.betas, ref.betas, **TOL)
    torch.testing.assert_close(s.alphas, ref.alphas, **TOL)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, **TOL)
    assert s.alphas_cumprod.dtype == torch.float32


def test_linear_schedule_by_hand():
    """DDPM section 4: β from 1e-4 to 0.02 in 1000 steps; ᾱ the running product of 1 - β."""
    s = Df.NoiseSchedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.betas[1].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / 999, rel=1e-5)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - s.betas[1].item()), rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in s.betas.double().tolist()), rel=1e-4)


@pytest.mark.parametrize("ours,theirs", SCHEDULES)
def test_add_noise_equals_diffusers(ours, theirs):
    s, ref = Df.NoiseSchedule(**ours), DDPMScheduler(**theirs)
    x0, noise = images(4, 0), images(4, 1)
    t = torch.tensor([0, 7, s.num_train_timesteps // 2, s.num_train_timesteps - 1])  # rows at different noise
    torch.testing.assert_close(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), **TOL)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)  # eq. (4) written out
    torch.testing.assert_close(s.add_noise(x0, noise, t), abar.sqrt() * x0 + (1 - abar).sqrt() * noise, **TOL)
    torch.testing.assert_close(s.add_noise(x0, noise, 5), ref.add_noise(x0, noise, torch.full((4,), 5)), **TOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 3, 10, 25, 1000])
def test_timesteps_equal_diffusers(spacing, steps):
    ref = DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert Df.NoiseSchedule().timesteps(steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_equals_diffusers(t, clip):
    s, ref = Df.NoiseSchedule(), DDPMScheduler(clip_sample=clip)
    x_t, eps = 3 * images(2, 0), images(2, 1)  # x_t wide enough that clipping x̂_0 changes it
    ref_out = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(s.ddpm_step(eps, t, x_t, noise=noise, clip_x0=clip), ref_out.prev_sample, **TOL)
    with_gen = s.ddpm_step(eps, t, x_t, generator=torch.Generator().manual_seed(7), clip_x0=clip)
    torch.testing.assert_close(with_gen, ref_out.prev_sample, **TOL)


def test_ddpm_step_adds_noise_except_at_zero():
    s, x_t, eps = Df.NoiseSchedule(), images(2, 0), images(2, 1)
    a, b = (s.ddpm_step(eps, 10, x_t, noise=images(2, k)) for k in (2, 3))
    assert (a - b).abs().max() > 1e-3
    a, b = (s.ddpm_step(eps, 0, x_t, noise=images(2, k)) for k in (2, 3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_strided_ddpm_steps_equal_diffusers(spacing):
    s, ref = Df.NoiseSchedule(), DDPMScheduler(timestep_spacing=spacing, clip_sample=False)
    ref.set_timesteps(10)
    ts = s.timesteps(10, spacing)
    x_t, eps = images(2, 0), images(2, 1)
    for i, t in enumerate(ts):
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1
        assert prev_t == int(ref.previous_timestep(torch.tensor(t)))
        expected = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        got = s.ddpm_step(eps, t, x_t, prev_t, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_equal_diffusers(spacing, clip, eta):
    s, ref = Df.NoiseSchedule(), DDIMScheduler(timestep_spacing=spacing, clip_sample=clip)
    ref.set_timesteps(5)
    ts = s.timesteps(5, spacing)
    x_t = 2 * images(2, 0)
    for i, t in enumerate(ts):  # the last step goes to ᾱ = 1 (set_alpha_to_one)
        eps, noise = images(2, 10 + i), images(2, 20 + i)
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1
        expected = ref.step(eps, t, x_t, eta=eta, variance_noise=noise if eta else None).prev_sample
        torch.testing.assert_close(s.ddim_step(eps, t, x_t, prev_t, eta=eta, noise=noise, clip_x0=clip), expected, **TOL)
        x_t = expected


def test_ddim_eta0_by_hand_and_deterministic():
    s, x_t, eps = Df.NoiseSchedule(), images(2, 0), images(2, 1)
    a_t, a_p = s.alphas_cumprod[600], s.alphas_cumprod[400]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # eq. (12) with σ = 0
    torch.testing.assert_close(s.ddim_step(eps, 600, x_t, 400), a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps, **TOL)
    torch.testing.assert_close(s.predict_x0(eps, 600, x_t), x0, **TOL)


@pytest.mark.parametrize("clip", [False, True])
def test_predicting_x0_equals_diffusers_sample_prediction(clip):
    """A model that predicts the clean image: its ε̂ = (x_t - sqrt(ᾱ) x̂_0) / sqrt(1 - ᾱ) in our ε-steps equals
    diffusers' schedulers with prediction_type="sample"."""
    s = Df.NoiseSchedule()
    x_t, x0 = 2 * images(2, 0), 1.5 * images(2, 1)
    ddim = DDIMScheduler(prediction_type="sample", clip_sample=clip)
    ddim.set_timesteps(10)
    ddpm = DDPMScheduler(prediction_type="sample", clip_sample=clip)
    for t in (900, 300, 0):
        eps = s.epsilon_from_x0(x0, t, x_t)
        torch.testing.assert_close(s.predict_x0(eps, t, x_t), x0, atol=1e-4, rtol=1e-5)  # the inverse
        expected = ddim.step(x0, t, x_t).prev_sample
        torch.testing.assert_close(s.ddim_step(eps, t, x_t, max(t - 100, -1), clip_x0=clip), expected, atol=1e-5, rtol=1e-5)
        expected = ddpm.step(x0, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        got = s.ddpm_step(eps, t, x_t, generator=torch.Generator().manual_seed(t), clip_x0=clip)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_guide_equals_diffusers_guider_and_pipeline_formula():
    cond, uncond = images(2, 0), images(2, 1)
    for scale in (0.0, 1.0, 2.5, 7.5):
        expected = ClassifierFreeGuidance(guidance_scale=scale).forward(cond, uncond).pred
        torch.testing.assert_close(Df.guide(uncond, cond, scale), expected, **TOL)
        # StableDiffusionPipeline: noise_pred_uncond, noise_pred_text = noise_pred.chunk(2), then this line
        noise_pred_uncond, noise_pred_text = torch.cat([uncond, cond]).chunk(2)
        pipeline = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
        torch.testing.assert_close(Df.guide(uncond, cond, scale), pipeline, **TOL)
    torch.testing.assert_close(Df.guide(uncond, cond, 0.0), uncond, atol=0, rtol=0)


def test_timestep_embedding_equals_diffusers():
    t = torch.tensor([0, 1, 17, 999])
    for dim in (2, 8, 128):
        expected = get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=0)
        torch.testing.assert_close(Df.timestep_embedding(t, dim), expected, **TOL)


def test_sincos_2d_equals_diffusers_and_starts_the_denoiser():
    for G, dim in ((2, 4), (8, 96)):
        expected = get_2d_sincos_pos_embed(dim, G, base_size=G)  # positions 0..G-1 (base_size = grid size)
        torch.testing.assert_close(Df.sincos_2d(G, dim), expected.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(Df.Denoiser(CFG).pos_embed[0], Df.sincos_2d(2, 16), atol=0, rtol=0)


class Stub(torch.nn.Module):
    """ε = 0.5 x_t + the caption's mean feature (nothing if dropped) + t / 1000: every input matters."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, t, cond, cond_mask=None, drop=None):
        self.calls.append((t.clone(), None if drop is None else drop.clone()))
        c = cond.mean(dim=(1, 2)) * (~drop).float()  # (B,)
        return 0.5 * x_t + (c + t.float() / 1000).view(-1, 1, 1, 1)


def test_diffusion_loss_is_eq14_with_condition_dropout():
    s, x0, cond = Df.NoiseSchedule(), images(4, 0), randn(4, 3, 5, seed=1)
    t, noise, drop = torch.tensor([3, 100, 500, 999]), images(4, 2), torch.tensor([False, True, False, True])
    model = Stub()
    got = Df.diffusion_loss(model, s, x0, cond, t=t, noise=noise, drop=drop)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    expected = ((noise - Stub()(x_t, t, cond, drop=drop)) ** 2).mean()
    torch.testing.assert_close(got, expected, **TOL)
    # drawn: t uniform in [0, T), ε normal, drop with probability p_uncond, in that order from the generator
    g = torch.Generator().manual_seed(3)
    t2 = torch.randint(1000, (4,), generator=g)
    noise2 = torch.randn(x0.shape, generator=g)
    drop2 = torch.rand(4, generator=g) < 0.5
    expected = Df.diffusion_loss(Stub(), s, x0, cond, t=t2, noise=noise2, drop=drop2)
    got = Df.diffusion_loss(model, s, x0, cond, p_uncond=0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, **TOL)
    for p, want in ((0.0, False), (1.0, True)):
        Df.diffusion_loss(model, s, x0, cond, p_uncond=p)
        assert bool((model.calls[-1][1] == want).all())


def test_x0_prediction_loss_and_guidance():
    s, x0, cond = Df.NoiseSchedule(), images(4, 0), randn(4, 3, 5, seed=1)
    t, noise, drop = torch.tensor([3, 100, 500, 999]), images(4, 2), torch.tensor([False, True, False, True])
    got = Df.diffusion_loss(Stub(), s, x0, cond, t=t, noise=noise, drop=drop, prediction="sample")
    x_t = s.add_noise(x0, noise, t)
    torch.testing.assert_close(got, ((x0 - Stub()(x_t, t, cond, drop=drop)) ** 2).mean(), **TOL)
    x_t = images(3, 3)
    x0_c = Stub()(x_t, torch.full((3,), 42), cond[:3], drop=torch.zeros(3, dtype=torch.bool))
    x0_u = Stub()(x_t, torch.full((3,), 42), cond[:3], drop=torch.ones(3, dtype=torch.bool))
    expected = s.epsilon_from_x0(x0_u + 2.0 * (x0_c - x0_u), 42, x_t)  # guiding x̂_0 is guiding ε̂
    got = Df.guided_epsilon(Stub(), x_t, 42, cond[:3], scale=2.0, schedule=s, prediction="sample")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Df.guided_epsilon(Stub(), x_t, 42, cond[:3], schedule=s, prediction="sample"),
                               s.epsilon_from_x0(x0_c, 42, x_t), **TOL)


def test_guided_epsilon_runs_cond_and_null_captions():
    x_t, cond = images(3, 0), randn(3, 4, 5, seed=1)
    model = Stub()
    got = Df.guided_epsilon(model, x_t, 42, cond, scale=3.0)
    eps_c = Stub()(x_t, torch.full((3,), 42), cond, drop=torch.zeros(3, dtype=torch.bool))
    eps_u = Stub()(x_t, torch.full((3,), 42), cond, drop=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(got, eps_u + 3.0 * (eps_c - eps_u), **TOL)
    assert len(model.calls) == 1 and model.calls[0][1].tolist() == [False] * 3 + [True] * 3
    torch.testing.assert_close(Df.guided_epsilon(model, x_t, 42, cond, scale=1.0), eps_c, **TOL)
    assert model.calls[-1][1].tolist() == [False] * 3  # scale 1: the conditional half only


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_equals_a_diffusers_guided_loop(sampler, prediction):
    """The loop of diffusers' pipelines: set_timesteps, then per t the model on [uncond; cond], guidance, step.
    5 steps: with trailing spacing diffusers' DDIM step jumps back T // n, which is the next timestep only
    when n divides T; ours always goes to the next timestep."""
    s, cond, x_T = Df.NoiseSchedule(), randn(2, 3, 5, seed=1), images(2, 0)
    ref = (DDIMScheduler if sampler == "ddim" else DDPMScheduler)(timestep_spacing="trailing", clip_sample=True,
                                                                  prediction_type=prediction)
    ref.set_timesteps(5)
    model, x, g = Stub(), x_T.clone(), torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        tt = torch.full((4,), int(t))
        eps = model(torch.cat([x, x]), tt, torch.cat([cond, cond]), drop=torch.tensor([True, True, False, False]))
        uncond, text = eps.chunk(2)
        x = ref.step(uncond + 2.0 * (text - uncond), t, x, generator=g).prev_sample
    got, trajectory = Df.sample(Stub(), s, cond, (2, 3, 8, 8), steps=5, sampler=sampler, guidance_scale=2.0,
                                x_T=x_T, generator=torch.Generator().manual_seed(5), return_trajectory=True,
                                prediction=prediction)
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)
    assert [t for t, _, _ in trajectory] == ref.timesteps.tolist()
    torch.testing.assert_close(trajectory[0][1], x_T, atol=0, rtol=0)


def test_sample_defaults_are_50_ddim_steps_unguided_trailing_clipped_and_return_the_images():
    s, cond, x_T, model = Df.NoiseSchedule(), randn(2, 3, 5, seed=1), images(2, 0), Stub()
    got = Df.sample(model, s, cond, (2, 3, 8, 8), x_T=x_T)
    assert isinstance(got, torch.Tensor)  # no trajectory unless asked
    assert [int(t[0]) for t, _ in model.calls] == s.timesteps(50, "trailing")  # 50 steps, trailing
    assert all(drop.tolist() == [False, False] for _, drop in model.calls)  # scale 1: no null-caption half
    explicit = Df.sample(Stub(), s, cond, (2, 3, 8, 8), x_T=x_T, steps=50, sampler="ddim", guidance_scale=1.0,
                         spacing="trailing", clip_x0=True, return_trajectory=False, prediction="epsilon")
    torch.testing.assert_close(got, explicit, atol=0, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sample_visits_the_schedules_timesteps_of_its_spacing(spacing):
    s, model = Df.NoiseSchedule(), Stub()
    _, trajectory = Df.sample(model, s, randn(2, 3, 5, seed=1), (2, 3, 8, 8), steps=7, spacing=spacing,
                              return_trajectory=True, x_T=images(2, 0))
    assert [t for t, _, _ in trajectory] == s.timesteps(7, spacing) == [int(c[0][0]) for c in model.calls]
    assert s.timesteps(7, "leading") != s.timesteps(7, "trailing")


def test_sample_draws_x_T_with_the_generator():
    s, cond = Df.NoiseSchedule(), randn(2, 3, 5, seed=1)
    torch.manual_seed(0)
    got = Df.sample(Stub(), s, cond, (2, 3, 8, 8), steps=3, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(1)  # the global state plays no part
    x_T = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, Df.sample(Stub(), s, cond, (2, 3, 8, 8), steps=3, x_T=x_T), atol=0, rtol=0)


@pytest.mark.parametrize("clip_x0", [True, False])
def test_sample_trajectory_holds_each_x_t_and_its_x0_estimate_clipped_as_asked(clip_x0):
    s, cond, model = Df.NoiseSchedule(), randn(2, 3, 5, seed=1), Stub()
    x, trajectory = Df.sample(model, s, cond, (2, 3, 8, 8), steps=6, guidance_scale=2.0, clip_x0=clip_x0,
                              return_trajectory=True, x_T=3 * images(2, 0))
    outside = 0
    for t, x_t, x0 in trajectory:
        eps = Df.guided_epsilon(Stub(), x_t, t, cond, scale=2.0)
        a = s.alphas_cumprod[t]
        raw = (x_t - (1 - a).sqrt() * eps) / a.sqrt()  # DDPM eq. 15 solved for x_0
        torch.testing.assert_close(x0, raw.clamp(-1, 1) if clip_x0 else raw, atol=1e-5, rtol=1e-5)
        outside += int(((raw < -1) & (raw > -2)).any()) + int(((raw > 1) & (raw < 2)).any())
    assert outside >= 2  # estimates just outside both ends, where a wrong clip range would show


def test_sample_reads_the_caption_mask():
    m, s = denoiser(), Df.NoiseSchedule()
    cond, x_T = randn(2, 4, 6, seed=1), images(2, 0)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    changed = cond.clone()
    changed[0, 2:] += 5.0  # masked positions only
    changed[1, 3] -= 5.0

    def run(c, mk):
        return Df.sample(m, s, c, (2, 3, 8, 8), cond_mask=mk, steps=3, guidance_scale=2.0, x_T=x_T)
    torch.testing.assert_close(run(cond, mask), run(changed, mask), atol=1e-5, rtol=0)
    assert (run(cond, None) - run(changed, None)).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_sample_runs_the_model_in_eval_mode_and_gives_its_mode_back(training):
    seen = []

    class Watch(Stub):
        def forward(self, *args, **kwargs):
            seen.append(self.training)
            return super().forward(*args, **kwargs)
    model = Watch().train(training)
    Df.sample(model, Df.NoiseSchedule(), randn(2, 3, 5, seed=1), (2, 3, 8, 8), steps=3, x_T=images(2, 0))
    assert seen == [False] * 3 and model.training == training


def test_sample_takes_a_plain_function_as_the_model():
    stub = Stub()

    def eps(x_t, t, cond, cond_mask=None, drop=None):  # no nn.Module: no mode to set
        return stub(x_t, t, cond, cond_mask, drop)
    x_T, cond = images(2, 0), randn(2, 3, 5, seed=1)
    torch.testing.assert_close(Df.sample(eps, Df.NoiseSchedule(), cond, (2, 3, 8, 8), steps=3, x_T=x_T),
                               Df.sample(Stub(), Df.NoiseSchedule(), cond, (2, 3, 8, 8), steps=3, x_T=x_T))


def test_sample_names_itself_in_a_bad_prediction_error():
    with pytest.raises(ValueError, match=r"^sample: prediction must be"):
        Df.sample(Stub(), Df.NoiseSchedule(), randn(2, 3, 5, seed=1), (2, 3, 8, 8), steps=3, prediction="v")


# --- the denoiser ------------------------------------------------------------------------------------

CFG = Df.DenoiserConfig(image_size=8, patch_size=4, width=16, layers=2, heads=2, cond_dim=6, max_cond_len=5)


def denoiser(seed=0):
    return scramble_(Df.Denoiser(CFG), seed).eval()  # the head is no longer zero


def test_denoiser_shapes_and_every_input_matters():
    m = denoiser()
    x, t, cond = randn(2, 3, 8, 8), torch.tensor([5, 900]), randn(2, 4, 6, seed=1)
    out = m(x, t, cond)
    assert out.shape == (2, 3, 8, 8)
    for changed in (m(x + 0.1, t, cond), m(x, t + 50, cond), m(x, t, cond + 0.1)):
        assert ((changed - out).abs().flatten(1).amax(1) > 1e-4).all()  # both rows move
    assert Df.Denoiser(CFG)(x, t, cond).abs().max() == 0  # untrained: the zero head predicts ε = 0


def test_denoiser_null_caption_and_mask():
    m = denoiser()
    x, t = randn(2, 3, 8, 8), torch.tensor([5, 900])
    cond, other = randn(2, 4, 6, seed=1), randn(2, 4, 6, seed=2)
    drop = torch.tensor([True, False])
    a, b = m(x, t, cond, drop=drop), m(x, t, other, drop=drop)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)  # a dropped caption is not read
    assert (a[1] - b[1]).abs().max() > 1e-4
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    changed = cond.clone()
    changed[0, 2:] += 5.0  # only masked positions of row 0
    a, b = m(x, t, cond, mask), m(x, t, changed, mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (m(x, t, cond) - a)[0].abs().max() > 1e-4  # unmasked, the same positions are read
    # the null caption is one token: the same output whatever the caption's length
    torch.testing.assert_close(m(x, t, cond, drop=torch.ones(2, dtype=torch.bool)),
                               m(x, t, cond[:, :1], drop=torch.ones(2, dtype=torch.bool)), atol=1e-6, rtol=0)


def test_denoiser_every_parameter_learns():
    m = denoiser().train()
    loss = Df.diffusion_loss(m, Df.NoiseSchedule(), randn(4, 3, 8, 8), randn(4, 3, 6, seed=1),
                             drop=torch.tensor([True, False, False, True]))
    loss.backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead


def test_denoiser_unpatchify_puts_each_patch_back_in_place():
    """With the blocks' residual branches silenced, patch token i only carries its own pixels: the output's
    patch i depends on the input's patch i only."""
    m = denoiser()
    with torch.no_grad():
        for block in m.blocks:
            block.attn.out_proj.weight.zero_(), block.attn.out_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_(), block.mlp.c_proj.bias.zero_()
    x, t, cond = randn(1, 3, 8, 8), torch.tensor([3]), randn(1, 2, 6, seed=1)
    y = x.clone()
    y[:, :, 4:, :4] += 1.0  # the bottom-left patch
    d = (m(y, t, cond) - m(x, t, cond)).abs().sum(1)[0]  # (8, 8)
    assert d[4:, :4].min() > 0 and d[:4].max() == 0 and d[4:, 4:].max() == 0
    assert (m(x, t + 100, cond) - m(x, t, cond)).abs().flatten(2).amin(2).min() > 0  # every patch reads t itself


def test_clip_text_features_are_chapter_9s_tower():
    clip = scramble_(CLIP(CLIPConfig(embed_dim=8, vision=CLIPVisionConfig(image_size=16, layers=1, width=16,
                                                                          patch_size=8, head_width=8),
                                     text=CLIPTextConfig(context_length=8, vocab_size=30, width=16, layers=2,
                                                         head_width=8))), 0).eval()
    ids = torch.tensor([[1, 5, 7, 29, 0, 0], [1, 3, 4, 6, 8, 29]])  # 29: the end token, the largest id
    features, mask = Df.clip_text_features(clip, ids)
    assert features.shape == (2, 6, 16) and mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    torch.testing.assert_close(features[[0, 1], [3, 5]] @ clip.text_projection, clip.encode_text(ids), **TOL)


# --- bad input -----------------------------------------------------------------------------------------

def test_bad_input_fails_clearly():
    s = Df.NoiseSchedule()
    with pytest.raises(ValueError, match="schedule must be"):
        Df.NoiseSchedule(schedule="quadratic")
    with pytest.raises(ValueError, match="beta_start ≤ beta_end"):
        Df.NoiseSchedule(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        Df.NoiseSchedule(num_train_timesteps=1)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        s.add_noise(images(2), images(2), torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="one shape"):
        s.add_noise(images(2), images(3), 0)
    with pytest.raises(ValueError, match="integer tensor"):
        s.add_noise(images(2), images(2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="earlier prev_t"):
        s.ddim_step(images(2), 10, images(2), 10)
    with pytest.raises(ValueError, match=r"int in \[-1, 1000\)"):
        s.ddim_step(images(2), 1000, images(2), 10)
    with pytest.raises(ValueError, match="steps must be an int"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(10, "linspace")
    m = denoiser()
    with pytest.raises(ValueError, match=r"x_t must be a float tensor \(B, 3, 8, 8\)"):
        m(randn(2, 3, 16, 16), 0, randn(2, 3, 6))
    with pytest.raises(ValueError, match=r"cond must be caption features \(2, T_c, E=6\)"):
        m(randn(2, 3, 8, 8), 0, randn(2, 3, 7))
    with pytest.raises(ValueError, match="1 ≤ T_c ≤ 5"):
        m(randn(2, 3, 8, 8), 0, randn(2, 6, 6))
    with pytest.raises(ValueError, match="at least one real token"):
        m(randn(2, 3, 8, 8), 0, randn(2, 3, 6), torch.tensor([[True] * 3, [False] * 3]))
    with pytest.raises(ValueError, match="drop must be a bool"):
        m(randn(2, 3, 8, 8), 0, randn(2, 3, 6), drop=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        Df.DenoiserConfig(width=18, heads=2)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        Df.DenoiserConfig(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="sampler must be"):
        Df.sample(m, s, randn(2, 3, 6), (2, 3, 8, 8), sampler="euler")
    with pytest.raises(ValueError, match="one shape"):
        Df.guide(images(2), images(3), 2.0)
    with pytest.raises(ValueError, match="prediction must be 'epsilon'"):
        Df.diffusion_loss(m, s, randn(2, 3, 8, 8), randn(2, 3, 6), prediction="v_prediction")
    with pytest.raises(ValueError, match="needs the schedule"):
        Df.guided_epsilon(m, randn(2, 3, 8, 8), 5, randn(2, 3, 6), prediction="sample")


# --- what a mutation run found untested (issue 31) --------------------------------------------------------

META = torch.device("meta")  # a second device on a machine without one: tensors with shapes but no values
TIGHT = dict(atol=1e-12, rtol=1e-12)  # float64 formulas evaluated in float64


class NoValuesOnMeta(TorchFunctionMode):
    """Meta tensors have no values, so the checks the code makes on its inputs' values (bool() of "every caption
    has a real token", int() of a timestep's bounds) are answered as passing (True, 0); everything else runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__bool__, torch.Tensor.__int__) and args[0].device == META:
            return True if func is torch.Tensor.__bool__ else 0
        return func(*args, **(kwargs or {}))


class OnOneDevice(torch.nn.Module):
    """ε = 0, after checking that every tensor it is given lives on x_t's device."""

    def forward(self, x_t, t, cond, cond_mask=None, drop=None):
        for name, a in (("t", t), ("cond", cond), ("cond_mask", cond_mask), ("drop", drop)):
            assert a is None or a.device == x_t.device, f"{name} on {a.device}, x_t on {x_t.device}"
        return torch.zeros_like(x_t)


def masked_stub(x_t, t, cond, cond_mask=None, drop=None):
    """Stub's ε with the caption's mean over its real tokens only (all of them if cond_mask is None)."""
    mask = torch.ones(cond.shape[:2], dtype=torch.bool) if cond_mask is None else cond_mask
    assert mask.shape == cond.shape[:2], (mask.shape, cond.shape)
    c = (cond * mask[..., None]).sum(dim=(1, 2)) / (mask.sum(1) * cond.shape[2]) * (~drop).float()  # (B,)
    return 0.5 * x_t + (c + t.float() / 1000).view(-1, 1, 1, 1)


MASK = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_schedule_and_embedding_are_float32_under_a_float64_default(float64_default):
    """As diffusers makes them: betas in float32 (linspace / the cosine's list), the sinusoids' frequencies too."""
    for ours, theirs in SCHEDULES[1:]:
        s, ref = Df.NoiseSchedule(**ours), DDPMScheduler(**theirs)
        torch.testing.assert_close(s.betas, ref.betas, **TOL)  # dtypes compared too
        torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, **TOL)
    t = torch.tensor([0, 17, 999])
    torch.testing.assert_close(Df.timestep_embedding(t, 8),
                               get_timestep_embedding(t, 8, flip_sin_to_cos=False, downscale_freq_shift=0), **TOL)


def test_schedule_arguments_at_their_bounds():
    s, ref = Df.NoiseSchedule(2), DDPMScheduler(num_train_timesteps=2)  # two steps are enough
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, **TOL)
    s = Df.NoiseSchedule(beta_start=0.01, beta_end=0.01)  # a constant β is allowed
    torch.testing.assert_close(s.betas, torch.full((1000,), 0.01), **TOL)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match=rf"^NoiseSchedule: num_train_timesteps must be an int ≥ 2, got {bad!r}$"):
            Df.NoiseSchedule(bad)
    for start, end in ((0.0, 0.02), (-0.1, 0.02), (0.1, 0.01), (1e-4, 1.0), (1e-4, 1.5)):
        with pytest.raises(ValueError, match=rf"^NoiseSchedule: need 0 < beta_start ≤ beta_end < 1, got {start}, {end}$"):
            Df.NoiseSchedule(beta_start=start, beta_end=end)
    assert repr(Df.NoiseSchedule(schedule="cosine")) == "NoiseSchedule(T=1000, cosine)"
    assert Df.NoiseSchedule(50).schedule == "linear"


def test_add_noise_in_float64_equals_diffusers():
    """ᾱ is taken to x0's dtype before its square root, as diffusers does."""
    s, ref = Df.NoiseSchedule(), DDPMScheduler()
    x0, noise, t = images(4, 0).double(), images(4, 1).double(), torch.tensor([0, 7, 500, 999])
    got = s.add_noise(x0, noise, t)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref.add_noise(x0, noise, t), **TIGHT)


def test_add_noise_on_one_number_per_row_and_on_another_device():
    s, ref = Df.NoiseSchedule(), DDPMScheduler()
    x0, noise, t = randn(4, seed=0), randn(4, seed=1), torch.tensor([0, 7, 500, 999])  # x0 (B,): allowed
    torch.testing.assert_close(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), **TOL)
    x0 = torch.zeros(2, 3, device=META)
    assert s.add_noise(x0, x0, torch.tensor([3, 5])).device == META  # t on the CPU
    with NoValuesOnMeta():
        assert s.add_noise(x0, x0, torch.tensor([3, 5], device=META)).device == META  # t beside the images


@pytest.mark.parametrize("x0, noise, got", [
    ([0.0, 1.0], randn(2), r"\(\) and \(2,\)"),
    (randn(2), [0.0, 1.0], r"\(2,\) and \(\)"),
    (torch.tensor(1.0), torch.tensor(1.0), r"\(\) and \(\)"),
])
def test_add_noise_names_what_it_got(x0, noise, got):
    with pytest.raises(ValueError, match=rf"^add_noise: x0 and noise must be tensors of one shape \(B, ...\), got {got}$"):
        Df.NoiseSchedule().add_noise(x0, noise, 0)


@pytest.mark.parametrize("t, got", [
    ([0, 1], "got list"),
    (2.5, "got float"),
    (torch.tensor([0.5, 1.0]), r"got shape \(2,\), dtype torch.float32"),
    (torch.tensor([0, 1, 2]), r"got shape \(3,\), dtype torch.int64"),
])
def test_timesteps_of_add_noise_name_what_they_are(t, got):
    with pytest.raises(ValueError, match=rf"^timesteps must be an int or an integer tensor \(B,\) = \(2,\), {got}$"):
        Df.NoiseSchedule().add_noise(images(2), images(2), t)


def test_timesteps_default_to_trailing_spacing():
    ref = DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(7)
    assert Df.NoiseSchedule().timesteps(7) == ref.timesteps.tolist()


def test_steps_in_float64_by_hand():
    """ᾱ_t, ᾱ_prev (float32 numbers) are taken to x_t's dtype before any arithmetic: in float64 each step is its
    formula evaluated in float64."""
    s = Df.NoiseSchedule()
    x_t, eps, other, z = 2 * images(2, 0).double(), images(2, 1).double(), images(2, 2).double(), images(2, 3).double()
    t, prev = 700, 400
    a_t, a_p = s.alphas_cumprod[t].double(), s.alphas_cumprod[prev].double()
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(s.predict_x0(eps, t, x_t), x0, **TIGHT)
    torch.testing.assert_close(s.epsilon_from_x0(other, t, x_t), (x_t - a_t.sqrt() * other) / (1 - a_t).sqrt(), **TIGHT)
    for eta in (0.0, 0.5):  # DDIM, eq. (12)
        sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
        expected = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).sqrt() * eps + sigma * z
        torch.testing.assert_close(s.ddim_step(eps, t, x_t, prev, eta=eta, noise=z), expected, **TIGHT)
    alpha = a_t / a_p  # DDPM, eq. (6-7), with the α of the jump
    mean = a_p.sqrt() * (1 - alpha) / (1 - a_t) * x0 + alpha.sqrt() * (1 - a_p) / (1 - a_t) * x_t
    variance = (1 - a_p) / (1 - a_t) * (1 - alpha)
    torch.testing.assert_close(s.ddpm_step(eps, t, x_t, prev, noise=z), mean + variance.sqrt() * z, **TIGHT)


def test_step_noise_is_drawn_from_the_generator_in_x_ts_dtype_as_diffusers_does():
    s, x_t, eps = Df.NoiseSchedule(), 2 * images(2, 0).double(), images(2, 1).double()
    ddpm = DDPMScheduler(clip_sample=False)
    expected = ddpm.step(eps, 500, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    got = s.ddpm_step(eps, 500, x_t, generator=torch.Generator().manual_seed(7))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, **TOL)
    ddim = DDIMScheduler(clip_sample=False)
    ddim.set_timesteps(10)  # its step goes back T // 10 = 100
    expected = ddim.step(eps, 500, x_t, eta=1.0, generator=torch.Generator().manual_seed(7)).prev_sample
    got = s.ddim_step(eps, 500, x_t, 400, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, **TOL)


def test_deterministic_steps_draw_nothing_from_the_generator():
    s, x_t, eps = Df.NoiseSchedule(), images(2, 0), images(2, 1)
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    s.ddim_step(eps, 500, x_t, 400, generator=g)  # η = 0
    s.ddpm_step(eps, 0, x_t, generator=g)  # the last step adds no noise
    assert torch.equal(g.get_state(), state)


def test_steps_draw_their_noise_on_x_ts_device():
    s, x_t = Df.NoiseSchedule(), torch.zeros(2, 3, 8, 8, device=META)
    assert s.ddpm_step(x_t, 500, x_t, generator=torch.Generator().manual_seed(0)).device == META
    assert s.ddim_step(x_t, 500, x_t, 400, eta=1.0, generator=torch.Generator().manual_seed(0)).device == META


@pytest.mark.parametrize("step", ["ddim_step", "ddpm_step"])
def test_steps_name_what_they_got(step):
    s = Df.NoiseSchedule()
    for eps, x_t, got in ((images(2), images(1), r"\(2, 3, 8, 8\) and \(1, 3, 8, 8\)"),
                          ([0.0], images(1), r"\(\) and \(1, 3, 8, 8\)"),
                          (images(1), [0.0], r"\(1, 3, 8, 8\) and \(\)")):
        with pytest.raises(ValueError, match=rf"^{step}: eps and x_t must be tensors of one shape, got {got}$"):
            getattr(s, step)(eps, 10, x_t, 5)
    with pytest.raises(ValueError, match=rf"^{step}: a step goes from t ≥ 0 to an earlier prev_t < t, got t=10, "
                                         r"prev_t=10$"):
        getattr(s, step)(images(1), 10, images(1), 10)


def test_timestep_minus_one_is_the_clean_image_and_no_earlier():
    s, x_t, eps = Df.NoiseSchedule(), images(2, 0), images(2, 1)
    torch.testing.assert_close(s.predict_x0(eps, -1, x_t), x_t, atol=0, rtol=0)  # ᾱ = 1: no noise in x_t
    for t in (-2, 1000, 2.0):
        with pytest.raises(ValueError, match=rf"^timestep must be an int in \[-1, 1000\) \(-1: the clean image\), "
                                             rf"got {t!r}$"):
            s.predict_x0(eps, t, x_t)
    with pytest.raises(ValueError, match=r"^timestep must be an int in \[-1, 1000\) \(-1: the clean image\), got -2$"):
        s.ddim_step(eps, 10, x_t, -2)


def test_timestep_embedding_checks_dim_and_keeps_ts_device():
    for bad in (0, 3, 4.0, True):
        with pytest.raises(ValueError, match=rf"^timestep_embedding: dim must be an even int ≥ 2, got {bad!r}$"):
            Df.timestep_embedding(torch.tensor([1]), bad)
    assert Df.timestep_embedding(torch.tensor([1, 2], device=META), 8).device == META
    with pytest.raises(ValueError, match=r"^sincos_2d: dim must be a multiple of 4, got 6$"):
        Df.sincos_2d(2, 6)


def test_denoiser_config_at_its_bounds():
    smallest = Df.DenoiserConfig(image_size=1, channels=1, patch_size=1, width=4, layers=1, heads=1, cond_dim=1,
                                 max_cond_len=1, dropout=0.0)
    assert smallest.grid_size == 1
    assert Df.DenoiserConfig(width=8, heads=2, dropout=0.5).width == 8  # a multiple of 4 and of heads
    for width, heads in ((10, 2), (12, 8), (6, 3)):
        with pytest.raises(ValueError, match=rf"^DenoiserConfig: width={width} must be a multiple of 4 and of "
                                             rf"heads={heads}$"):
            Df.DenoiserConfig(width=width, heads=heads)
    for dropout in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^DenoiserConfig: dropout must be in \[0, 1\), got {dropout}$"):
            Df.DenoiserConfig(dropout=dropout)


@pytest.mark.parametrize("name", ["image_size", "channels", "patch_size", "width", "layers", "heads", "cond_dim",
                                  "max_cond_len"])
def test_denoiser_config_checks_every_size(name):
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=rf"^DenoiserConfig: {name} must be a positive int, got {bad!r}$"):
            Df.DenoiserConfig(**{name: bad})


def test_denoiser_starts_caption_positions_and_null_caption_small():
    """N(0, 0.02²), as DiT's and GPT-2's learned embeddings."""
    torch.manual_seed(0)
    m = Df.Denoiser(Df.DenoiserConfig(width=128, layers=1, heads=4, max_cond_len=32))
    assert 0.019 < m.cond_pos.std().item() < 0.021 and 0.016 < m.null_cond.std().item() < 0.024


def test_denoiser_is_a_dit_with_in_context_conditioning_by_hand():
    """The docstring's forward pass written out with torch's and diffusers' own parts: the timestep's sinusoids
    through Linear-SiLU-Linear; patches by a stride-P convolution plus their positions; the caption projected plus
    its positions, a dropped row replaced by the one null token; torch's pre-norm GELU encoder layers (4C wide)
    with the padding masked; LayerNorm, the head, the patches put back in place. Float64."""
    m = denoiser().double()
    refs = [scramble_(torch.nn.TransformerEncoderLayer(16, 2, 64, dropout=0.0, activation="gelu", batch_first=True,
                                                       norm_first=True), seed=10 + i).double().train()
            for i in range(2)]
    for block, ref in zip(m.blocks, refs):
        block.load_state_dict(X.from_torch_encoder_layer_state_dict(ref.state_dict()), strict=True)
    x, t, cond = randn(3, 3, 8, 8).double(), torch.tensor([5, 900, 300]), randn(3, 4, 6, seed=1).double()
    drop = torch.tensor([False, True, False])
    emb = get_timestep_embedding(t, 16, flip_sin_to_cos=False, downscale_freq_shift=0).double()
    time = F.linear(F.silu(F.linear(emb, m.time_mlp[0].weight, m.time_mlp[0].bias)), m.time_mlp[2].weight,
                    m.time_mlp[2].bias)  # (B, C)
    patches = F.conv2d(x, m.patch_embed.weight, m.patch_embed.bias, stride=4).flatten(2).transpose(1, 2) + m.pos_embed
    caption = F.linear(cond, m.cond_proj.weight, m.cond_proj.bias) + m.cond_pos[:, :4]  # (B, T_c, C)
    caption[1] = 0.0
    caption[1, 0] = m.null_cond
    keep = MASK.clone()
    keep[1] = torch.tensor([True, False, False, False])
    seq = torch.cat([time[:, None], caption, patches + time[:, None]], dim=1)
    padding = torch.cat([torch.zeros(3, 1, dtype=torch.bool), ~keep, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    for ref in refs:
        seq = ref(seq, src_key_padding_mask=padding)
    out = F.linear(F.layer_norm(seq[:, 5:], (16,), m.ln_f.weight, m.ln_f.bias), m.head.weight, m.head.bias)
    expected = out.view(3, 2, 2, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, cond, MASK, drop=drop), expected, atol=1e-10, rtol=1e-10)


def test_denoiser_runs_in_the_images_dtype():
    """A float64 denoiser on float64 images (the float32 timestep embedding is cast to them), and captions of
    either dtype into either model."""
    m32, m64 = denoiser(), denoiser().double()
    x, t, cond = randn(2, 3, 8, 8), torch.tensor([5, 900]), randn(2, 3, 6, seed=1)
    with torch.no_grad():
        out32, out64 = m32(x, t, cond), m64(x.double(), t, cond)  # float32 captions into the float64 model
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), out32, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m32(x, t, cond.double()), out32, atol=0, rtol=0)


def test_denoiser_reads_captions_of_max_cond_len_tokens():
    assert denoiser()(randn(2, 3, 8, 8), 5, randn(2, 5, 6)).shape == (2, 3, 8, 8)  # T_c = max_cond_len = 5


def test_denoiser_makes_its_defaults_on_the_images_device():
    m, x, cond = Df.Denoiser(CFG).to(META), torch.zeros(2, 3, 8, 8, device=META), torch.zeros(2, 3, 6, device=META)
    with NoValuesOnMeta():
        t, mask, drop = m._check(x, 5, cond, None, None)
        assert t.device == mask.device == drop.device == META
        m.blocks = torch.nn.ModuleList()  # attention checks its masks' values (utils.transformer, tested there)
        assert m(x, 5, cond).device == META
        assert m(x, 5, cond, drop=torch.ones(2, dtype=torch.bool, device=META)).device == META


@pytest.mark.parametrize("x_t, got", [
    ([[0.0]], "got list"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.long), r"got shape \(2, 3, 8, 8\), dtype torch.int64"),
    (torch.zeros(3, 8, 8), r"got shape \(3, 8, 8\), dtype torch.float32"),
])
def test_denoiser_names_the_images_it_got(x_t, got):
    with pytest.raises(ValueError, match=rf"^Denoiser: x_t must be a float tensor \(B, 3, 8, 8\), {got}$"):
        denoiser()(x_t, 0, randn(2, 3, 6))


def test_denoiser_names_the_timesteps_and_captions_it_got():
    m, x = denoiser(), randn(2, 3, 8, 8)
    for t, got in (([1, 2], "list"), (torch.tensor([1.0, 2.0]), r"\(2,\)"), (torch.tensor([1, 2, 3]), r"\(3,\)")):
        with pytest.raises(ValueError, match=rf"^Denoiser: t must be an int or an integer tensor \(2,\), got {got}$"):
            m(x, t, randn(2, 3, 6))
    for cond, got in (([[0.0]], "list"), (randn(2, 6), r"\(2, 6\)"), (randn(3, 3, 6), r"\(3, 3, 6\)"),
                      (randn(2, 0, 6), r"\(2, 0, 6\)"), (randn(2, 6, 6), r"\(2, 6, 6\)")):
        with pytest.raises(ValueError, match=rf"^Denoiser: cond must be caption features \(2, T_c, E=6\) with 1 ≤ T_c ≤ 5, "
                                             rf"got {got}$"):
            m(x, 0, cond)
    for mask in ([[True] * 3] * 2, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool),
                 torch.ones(3, 3, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"^Denoiser: cond_mask must be a bool tensor \(2, 3\), True on real caption "
                                             r"tokens$"):
            m(x, 0, randn(2, 3, 6), mask)


def test_diffusion_loss_checks_name_the_function():
    s, m, cond = Df.NoiseSchedule(), Stub(), randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"^diffusion_loss: prediction must be 'epsilon' .* got 'v_prediction'$"):
        Df.diffusion_loss(m, s, images(2), cond, prediction="v_prediction")
    for p in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^diffusion_loss: p_uncond is a probability in \[0, 1\], got {p}$"):
            Df.diffusion_loss(m, s, images(2), cond, p_uncond=p)
    for x0, got in (([[0.0]], "list"), (randn(4), r"\(4,\)")):
        with pytest.raises(ValueError, match=rf"^diffusion_loss: x0 must be a batch of images \(B, C_in, S, S\), "
                                             rf"got {got}$"):
            Df.diffusion_loss(m, s, x0, cond)


def test_diffusion_loss_on_a_batch_of_vectors():
    """x0 (B, D) is enough: eq. 14 written out, with a model ε = 0.5 x_t."""
    s, x0, noise, t = Df.NoiseSchedule(), randn(3, 5), randn(3, 5, seed=1), torch.tensor([3, 400, 999])
    got = Df.diffusion_loss(lambda x_t, *args, **kwargs: 0.5 * x_t, s, x0, randn(3, 2, 4), t=t, noise=noise)
    abar = s.alphas_cumprod[t].view(-1, 1)
    torch.testing.assert_close(got, ((noise - 0.5 * (abar.sqrt() * x0 + (1 - abar).sqrt() * noise)) ** 2).mean(), **TOL)


def test_diffusion_loss_draws_its_noise_in_x0s_dtype():
    """t, then ε in x0's dtype (float64 here), from the generator: with ε = 0 predicted, the loss is mean(ε²)."""
    x0 = images(2, 0).double()
    g = torch.Generator().manual_seed(3)
    torch.randint(1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    got = Df.diffusion_loss(OnOneDevice(), Df.NoiseSchedule(), x0, randn(2, 3, 5),
                            generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, (noise ** 2).mean(), **TIGHT)


def test_diffusion_loss_draws_on_the_cpu_and_moves_to_x0s_device():
    x0, cond = torch.zeros(2, 3, 8, 8, device=META), torch.zeros(2, 3, 5, device=META)
    mask = torch.ones(2, 3, dtype=torch.bool, device=META)
    with NoValuesOnMeta():
        loss = Df.diffusion_loss(OnOneDevice(), Df.NoiseSchedule(), x0, cond, mask,
                                 generator=torch.Generator().manual_seed(0))
    assert loss.device == META


def test_diffusion_loss_and_guidance_pass_the_caption_mask():
    s, x0, cond = Df.NoiseSchedule(), images(3, 0), randn(3, 4, 5, seed=1)
    t, noise, drop = torch.tensor([3, 500, 999]), images(3, 2), torch.tensor([False, True, False])
    got = Df.diffusion_loss(masked_stub, s, x0, cond, MASK, t=t, noise=noise, drop=drop)
    x_t = s.add_noise(x0, noise, t)
    torch.testing.assert_close(got, ((noise - masked_stub(x_t, t, cond, MASK, drop)) ** 2).mean(), **TOL)
    tt, no, yes = torch.full((3,), 42), torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    eps_c, eps_u = masked_stub(x_t, tt, cond, MASK, no), masked_stub(x_t, tt, cond, MASK, yes)
    torch.testing.assert_close(Df.guided_epsilon(masked_stub, x_t, 42, cond, MASK, scale=3.0), eps_u + 3.0 * (eps_c - eps_u),
                               **TOL)
    torch.testing.assert_close(Df.guided_epsilon(masked_stub, x_t, 42, cond, MASK), eps_c, **TOL)


def test_guided_epsilon_runs_on_the_images_device():
    x_t, cond = torch.zeros(2, 3, 8, 8, device=META), torch.zeros(2, 3, 5, device=META)
    mask = torch.ones(2, 3, dtype=torch.bool, device=META)
    for scale in (1.0, 2.0):
        assert Df.guided_epsilon(OnOneDevice(), x_t, 5, cond, mask, scale=scale).device == META


def test_guidance_checks_name_the_function():
    with pytest.raises(ValueError, match=r"^guided_epsilon: prediction must be 'epsilon' .* got 'v_prediction'$"):
        Df.guided_epsilon(Stub(), images(2), 5, randn(2, 3, 5), prediction="v_prediction")
    with pytest.raises(ValueError, match=r"^guided_epsilon: prediction='sample' needs the schedule"):
        Df.guided_epsilon(Stub(), images(2), 5, randn(2, 3, 5), prediction="sample")
    for uncond, cond, got in (([0.0], images(2), r"\(\) and \(2, 3, 8, 8\)"),
                              (images(2), [0.0], r"\(2, 3, 8, 8\) and \(\)")):
        with pytest.raises(ValueError, match=rf"^guide: eps_uncond and eps_cond must be tensors of one shape, "
                                             rf"got {got}$"):
            Df.guide(uncond, cond, 2.0)


def test_clip_text_features_on_the_ids_device():
    clip = CLIP(CLIPConfig(embed_dim=8, vision=CLIPVisionConfig(image_size=16, layers=1, width=16, patch_size=8,
                                                                head_width=8),
                           text=CLIPTextConfig(context_length=8, vocab_size=30, width=16, layers=1, head_width=8)))
    with NoValuesOnMeta():
        features, mask = Df.clip_text_features(clip.to(META), torch.zeros(2, 6, dtype=torch.long, device=META))
    assert features.device == mask.device == META and mask.shape == (2, 6)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_draws_x_T_on_the_captions_device(sampler):
    """The noise is drawn with a CPU generator and moved to the captions' device: checked on the meta device
    (shapes only, no data), which a machine without a GPU has, so a sample left on the CPU is noticed."""
    seen = []

    def model(x, t, cond, mask, drop=None):
        seen.append(x.device.type)
        return torch.zeros_like(x)

    cond = torch.zeros(2, 3, 4, device="meta")
    out = Df.sample(model, Df.NoiseSchedule(num_train_timesteps=10), cond, (2, 1, 2, 2), steps=3, sampler=sampler,
                    guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (2, 1, 2, 2)
    assert seen == ["meta"] * 3

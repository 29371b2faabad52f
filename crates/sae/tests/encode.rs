//! Encode, decode, top-k, metrics and logit lens against the Python fixtures.

use tch::{Kind, Tensor};

use crate::common::{assert_rel, ivec, max_abs_diff, pairs, CASES};

#[test]
fn encode_decode_match_fixture() {
    for case in CASES {
        let sae = case.sae();
        assert_eq!((sae.d_in(), sae.d_sae()), (case.d_in, case.d_sae));
        let t = case.sae_tensors();
        let mut worst = [0f64; 3];
        for p in 0..case.prompts {
            let x = &t[&format!("p{p}.input")];
            let (pre, acts) = sae.encode_with_pre(x).unwrap();
            let acts_fused = sae.encode(x).unwrap();
            assert_eq!(
                max_abs_diff(&acts, &acts_fused),
                0.0,
                "fused encode differs"
            );
            let recon = sae.decode(&acts).unwrap();
            for (i, (got, key)) in [(&pre, "pre"), (&acts, "acts"), (&recon, "recon")]
                .into_iter()
                .enumerate()
            {
                let d = max_abs_diff(got, &t[&format!("p{p}.{key}")]);
                worst[i] = worst[i].max(d);
            }
            // The active set must be identical (L0 exact).
            let want_active = t[&format!("p{p}.acts")].gt(0.0);
            assert!(
                acts.gt(0.0).equal(&want_active),
                "{} p{p}: active set differs",
                case.model
            );
        }
        eprintln!(
            "{}: max|diff| pre {:e} acts {:e} recon {:e}",
            case.model, worst[0], worst[1], worst[2]
        );
        println!(
            "PARITY|SAE encode/decode ({}, L0 exact)|1e-5|{:.2e}",
            case.model,
            worst.iter().cloned().fold(0.0, f64::max)
        );
        assert!(
            worst.iter().all(|&d| d <= 1e-5),
            "{}: {worst:?}",
            case.model
        );
    }
}

#[test]
fn l0_argmax_topk_match_fixture() {
    for case in CASES {
        let sae = case.sae();
        let t = case.sae_tensors();
        let json = case.sae_json();
        for p in 0..case.prompts {
            let want = &json["per_prompt"][p];
            let x = &t[&format!("p{p}.input")];
            let acts = sae.encode(x).unwrap();
            for (thr, key) in [(0.0, "l0_gt0"), (1.0, "l0_gt1")] {
                let l0 = Vec::<i64>::try_from(acts.gt(thr).sum_dim_intlist(-1, false, Kind::Int64))
                    .unwrap();
                assert_eq!(l0, ivec(&want[key]), "{} p{p} {key}", case.model);
            }
            let argmax = Vec::<i64>::try_from(acts.argmax(-1, false)).unwrap();
            assert_eq!(argmax, ivec(&want["argmax"]), "{} p{p} argmax", case.model);

            let top = sae.top_k(x, 5).unwrap();
            assert_eq!(top.shape, vec![x.size()[0]]);
            assert_eq!(top.num_tokens() as i64, x.size()[0]);
            for (tok, want_tok) in want["top5"].as_array().unwrap().iter().enumerate() {
                let want_pairs = pairs(want_tok);
                let got: Vec<(i64, f32)> = top.token(tok).collect();
                for (k, ((gi, gv), (wi, wv))) in got.iter().zip(&want_pairs).enumerate() {
                    if *wv > 0.0 {
                        assert_eq!(gi, wi, "{} p{p} token {tok} rank {k}", case.model);
                    }
                    assert!(
                        (f64::from(*gv) - wv).abs() <= 1e-4 * wv.abs().max(1.0),
                        "{} p{p} token {tok}: {gv} vs {wv}",
                        case.model
                    );
                }
            }
        }
    }
}

#[test]
fn reconstruction_metrics_match_fixture() {
    for case in CASES {
        let sae = case.sae();
        let t = case.sae_tensors();
        let json = case.sae_json();
        let want = &json["metrics_excluding_bos"];
        // Pool positions 1.. of every prompt.
        let xs: Vec<Tensor> = (0..case.prompts)
            .map(|p| {
                let x = &t[&format!("p{p}.input")];
                x.narrow(0, 1, x.size()[0] - 1)
            })
            .collect();
        let x = Tensor::cat(&xs, 0);
        let m = sae.reconstruction_metrics(&x, None, 0.0).unwrap();
        assert_eq!(m.tokens as i64, want["tokens"].as_i64().unwrap());
        assert_rel(m.mse, want["mse"].as_f64().unwrap(), 1e-4, "mse");
        assert_rel(
            m.explained_variance,
            want["explained_variance_tutorial"].as_f64().unwrap(),
            1e-4,
            "EV tutorial",
        );
        assert_rel(
            m.explained_variance_per_token,
            want["explained_variance_saelens"].as_f64().unwrap(),
            1e-4,
            "EV SAELens",
        );
        assert!(
            (m.mean_l0 - json["average_l0_gt0_excluding_bos"].as_f64().unwrap()).abs() < 5e-4,
            "L0 {}",
            m.mean_l0
        );
        eprintln!(
            "{}: mse {} EV tutorial {} EV per-token {} L0 {}",
            case.model, m.mse, m.explained_variance, m.explained_variance_per_token, m.mean_l0
        );

        // The same through a padded batch and a position mask: row 0 = prompt 0, row 1 = prompt 1
        // left-padded to the same length.
        let x0 = &t["p0.input"];
        let x1 = &t["p1.input"];
        let (t0, t1) = (x0.size()[0], x1.size()[0]);
        let pad = Tensor::zeros([t0 - t1, case.d_in], (Kind::Float, tch::Device::Cpu));
        let batch = Tensor::stack(
            &[
                x0.shallow_clone(),
                Tensor::cat(&[pad, x1.shallow_clone()], 0),
            ],
            0,
        );
        let am = Tensor::cat(
            &[
                Tensor::ones([1, t0], (Kind::Int64, tch::Device::Cpu)),
                Tensor::cat(
                    &[
                        Tensor::zeros([1, t0 - t1], (Kind::Int64, tch::Device::Cpu)),
                        Tensor::ones([1, t1], (Kind::Int64, tch::Device::Cpu)),
                    ],
                    1,
                ),
            ],
            0,
        );
        let mask = sae::metrics::position_mask(Some(&am), 2, t0).unwrap();
        let mb = sae
            .reconstruction_metrics(&batch, Some(&mask), 1.0)
            .unwrap();
        assert_eq!(mb.tokens as i64, t0 - 1 + t1 - 1);
        let mut want_l0 = ivec(&json["per_prompt"][0]["l0_gt1"])[1..].to_vec();
        want_l0.extend_from_slice(&ivec(&json["per_prompt"][1]["l0_gt1"])[1..]);
        assert_eq!(mb.l0_per_token, want_l0);
    }
}

#[test]
fn position_mask_excludes_bos_and_pads() {
    let m = sae::metrics::position_mask(None, 2, 4).unwrap();
    assert_eq!(
        Vec::<bool>::try_from(m.flatten(0, -1)).unwrap(),
        [false, true, true, true, false, true, true, true]
    );
    let am = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 1]).reshape([2, 3]);
    let m = sae::metrics::position_mask(Some(&am), 2, 3).unwrap();
    assert_eq!(
        Vec::<bool>::try_from(m.flatten(0, -1)).unwrap(),
        [false, true, true, false, false, false]
    );
}

#[test]
fn logit_lens_matches_fixture() {
    for case in CASES {
        let sae = case.sae();
        let json = case.sae_json();
        let emb = case.embedding();
        let entries = json["logit_lens"]["latents"].as_array().unwrap();
        let latents: Vec<i64> = entries
            .iter()
            .map(|e| e["latent"].as_i64().unwrap())
            .collect();
        let lens = sae.logit_lens(&latents, &emb, 10).unwrap();
        let mut worst = 0f64;
        for (got, want) in lens.iter().zip(entries) {
            assert_eq!(got.latent, want["latent"].as_i64().unwrap());
            for (g, w) in [
                (&got.promoted, &want["top10_promoted"]),
                (&got.suppressed, &want["top10_suppressed"]),
            ] {
                let w = pairs(w);
                assert_eq!(
                    g.iter().map(|p| p.0).collect::<Vec<_>>(),
                    w.iter().map(|p| p.0).collect::<Vec<_>>(),
                    "{} latent {}",
                    case.model,
                    got.latent
                );
                for ((_, gs), (_, ws)) in g.iter().zip(&w) {
                    worst = worst.max((f64::from(*gs) - ws).abs());
                }
            }
        }
        eprintln!("{}: logit lens max|score diff| {worst:e}", case.model);
        assert!(worst <= 1e-4);
    }
}

#[test]
fn steering_vector_is_scaled_decoder_row() {
    let case = &crate::common::F32;
    let sae = case.sae();
    let v = sae.steering_vector(3, 0.5).unwrap();
    assert_eq!(v.size(), [case.d_in]);
    assert_eq!(v.kind(), Kind::Float);
    let want = sae.w_dec().get(3) * 0.5;
    assert_eq!(max_abs_diff(&v, &want), 0.0);
    let two = sae.steering_sum(&[(3, 0.5), (51, -8.0)]).unwrap();
    let want = sae.w_dec().get(3) * 0.5 + sae.w_dec().get(51) * -8.0;
    assert_eq!(max_abs_diff(&two, &want), 0.0);
    assert!(matches!(
        sae.steering_vector(case.d_sae, 1.0),
        Err(sae::Error::LatentOutOfRange { .. })
    ));
    assert!(matches!(
        sae.steering_vector(-1, 1.0),
        Err(sae::Error::LatentOutOfRange { .. })
    ));
}

#[test]
fn encode_casts_input_and_checks_width() {
    let case = &crate::common::F32;
    let sae = case.sae();
    let t = case.sae_tensors();
    let x = &t["p0.input"];
    let bf = sae.encode(&x.to_kind(Kind::BFloat16)).unwrap();
    assert_eq!(bf.kind(), Kind::Float);
    let batched = sae.encode(&x.unsqueeze(0)).unwrap();
    assert_eq!(batched.size(), [1, x.size()[0], case.d_sae]);
    assert!(matches!(
        sae.encode(&x.narrow(1, 0, 10)),
        Err(sae::Error::Input { .. })
    ));
    assert!(sae.check_d_in(case.d_in).is_ok());
    let err = sae.check_d_in(2304).unwrap_err();
    assert!(matches!(
        err,
        sae::Error::DInMismatch {
            d_in: 64,
            model_d: 2304,
            ..
        }
    ));
    assert!(err.to_string().contains("params.npz"), "{err}");
}

/// A bf16 SAE computes the JumpReLU in bf16, as pyvene does with bf16 parameters
/// (`pre = x @ W_enc + b_enc`, `(pre > threshold) * relu(pre)`): measured against the same
/// bf16 numbers computed in f32, its pre-activations are no further off than pyvene's bf16
/// formula (ours adds the bias inside the product: one rounding, not two), the active latents
/// agree wherever the pre-activation is clear of the threshold by that error, and results and
/// steering vectors are bf16.
#[test]
fn bf16_sae_is_as_close_as_pyvenes_bf16_formula() {
    let bf16 = Kind::BFloat16;
    for case in CASES {
        let sae = case.sae().to_dtype(bf16).unwrap();
        assert_eq!(sae.dtype(), bf16);
        assert_eq!(sae.w_enc().kind(), bf16);
        // The bf16 weights in f32: the exact reference for the same numbers.
        let exact_sae = sae.to_dtype(Kind::Float).unwrap();
        let t = case.sae_tensors();
        let (mut ours_err, mut pyvene_err) = (0f64, 0f64);
        for p in 0..case.prompts {
            let x = t[&format!("p{p}.input")].to_kind(bf16);
            let (pre, acts) = sae.encode_with_pre(&x).unwrap();
            assert_eq!((pre.kind(), acts.kind()), (bf16, bf16));
            assert_eq!(sae.decode(&acts).unwrap().kind(), bf16);
            let (exact, _) = exact_sae.encode_with_pre(&x).unwrap();
            let pyvene = (x.matmul(sae.w_enc()) + sae.b_enc()).to_kind(Kind::Float);
            let err = |t: &Tensor| {
                (t.to_kind(Kind::Float) - &exact)
                    .abs()
                    .max()
                    .double_value(&[])
            };
            let (ours, theirs) = (err(&pre), err(&pyvene));
            ours_err = ours_err.max(ours);
            pyvene_err = pyvene_err.max(theirs);
            let threshold = exact_sae.threshold();
            let clear = (&exact - threshold).abs().gt(ours);
            let on = acts.to_kind(Kind::Float).gt(0.0);
            let exact_on = exact.gt_tensor(threshold).logical_and(&exact.gt(0.0));
            let flipped = on
                .logical_xor(&exact_on)
                .logical_and(&clear)
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert_eq!(
                flipped, 0,
                "{} p{p}: active set differs away from the threshold",
                case.model
            );
        }
        assert!(
            ours_err <= pyvene_err,
            "{}: pre-activation error {ours_err} exceeds pyvene's bf16 formula's {pyvene_err}",
            case.model
        );
        let v = sae.steering_vector(3, 8.0).unwrap();
        assert_eq!(v.kind(), bf16);
        assert!(
            v.equal(&(sae.w_dec().get(3) * 8.0)),
            "{}: steering vector",
            case.model
        );
        println!(
            "PARITY|bf16 SAE pre-activation error, ours vs pyvene's bf16 formula ({})|<= pyvene|{ours_err:.2e} vs {pyvene_err:.2e}",
            case.model
        );
    }
    assert!(CASES[0].sae().to_dtype(Kind::Int64).is_err());
}

//! The intervention graph on the mock model: every form, checked against hand computations.

use intervene::{
    Add, CallOptions, Collect, CollectWith, Component, ConstantSource, Error, FnIntervention,
    IntervenableModel, InterventionRole, Locations, Mode, RepresentationConfig as Rc, Site,
    SiteKind, Sources, Subspaces, Subtract, Vanilla, Zero,
};
use tch::{Kind, Tensor};

use crate::max_diff;
use crate::mock::{generate_by_hand, GenConfig, Input, Mock, D, L};

type R = Result<(), Box<dyn std::error::Error>>;

fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_diff(a, b);
    assert!(d <= tol, "max |a-b| = {d} > {tol}");
}

fn logits(o: &Option<Tensor>) -> &Tensor {
    o.as_ref().expect("logits")
}

fn base2() -> Input {
    Input::new(&[&[2, 5, 7, 9, 11], &[2, 3, 4, 6, 8]])
}

fn src2() -> Input {
    Input::new(&[&[2, 13, 14, 15, 1], &[2, 12, 10, 1, 0]])
}

fn out0() -> Component {
    Component::path("model.layers[0].output")
}

fn out1() -> Component {
    Component::path("model.layers[1].output")
}

fn vec_d(vals: [f32; 4]) -> Tensor {
    Tensor::from_slice(&vals)
}

// ------------------------------------------------------------------------------ components

#[test]
fn components_resolve_by_path_and_type_name() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new("model.layers[1].output", Collect),
            Rc::new("model.layers[1].input", Collect),
            Rc::new(Component::typed("block_output", 0), Collect),
            Rc::new(Component::typed("block_input", 1), Collect),
            Rc::new(Component::typed("head_attention_value_output", 1), Collect),
            Rc::new(Component::typed("block_output", 0), Collect),
        ],
    )?;
    let sites: Vec<Site> = (0..pv.len())
        .map(|i| pv.component(i).unwrap().site)
        .collect();
    assert_eq!(
        sites,
        vec![
            Site::new(1, SiteKind::BlockOutput),
            Site::new(1, SiteKind::BlockInput),
            Site::new(0, SiteKind::BlockOutput),
            Site::new(1, SiteKind::BlockInput),
            Site::new(1, SiteKind::AttentionValueOutput),
            Site::new(0, SiteKind::BlockOutput),
        ]
    );
    assert_eq!(pv.component(4).unwrap().heads, Some(2));
    assert_eq!(pv.component(4).unwrap().unit_width(), 2);
    assert_eq!(
        pv.keys(),
        vec![
            "comp_model_layers[1]_output_unit_pos_nunit_1#0",
            "comp_model_layers[1]_input_unit_pos_nunit_1#0",
            "layer_0_comp_block_output_unit_pos_nunit_1#0",
            "layer_1_comp_block_input_unit_pos_nunit_1#0",
            "layer_1_comp_head_attention_value_output_unit_pos_nunit_1#0",
            "layer_0_comp_block_output_unit_pos_nunit_1#1",
        ]
    );
    Ok(())
}

#[test]
fn bad_components_are_clear_errors_at_construction() {
    let m = Mock::new(Kind::Float);
    let build = |c: Component| IntervenableModel::new(&m, vec![Rc::new(c, Collect)]).err();
    match build(Component::path("model.layers[2].output")) {
        Some(Error::LayerOutOfRange {
            layer: 2,
            num_layers: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    match build(Component::typed("block_output", 5)) {
        Some(Error::LayerOutOfRange { layer: 5, .. }) => {}
        other => panic!("{other:?}"),
    }
    match build(Component::path("model.layers[0].outptu")) {
        Some(e @ Error::UnknownComponent { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("model.layers[0].outptu") && s.contains(".input"),
                "{s}"
            );
        }
        other => panic!("{other:?}"),
    }
    match build(Component::path("model.layerz[0].output")) {
        Some(e @ Error::UnknownComponent { .. }) => {
            assert!(e.to_string().contains("model.layerz[0]"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match build(Component::typed("mlp_outptu", 0)) {
        Some(e @ Error::UnknownComponent { .. }) => assert!(e.to_string().contains("mlp_outptu")),
        other => panic!("{other:?}"),
    }
    // A known type the model does not expose, and a head_ variant of a headless kind.
    assert!(matches!(
        build(Component::typed("mlp_output", 0)),
        Some(Error::UnknownComponent { .. })
    ));
    assert!(matches!(
        build(Component::typed("head_block_output", 0)),
        Some(Error::UnknownComponent { .. })
    ));
}

// ------------------------------------------------------------------------------ collect

#[test]
fn collect_whole_tensor_leaves_the_model_untouched() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Collect),
            Rc::new(Component::typed("block_input", 0), Collect),
        ],
    )?;
    let o = pv.forward(
        &base,
        Sources::None,
        &CallOptions::new().output_original_output(true),
    )?;
    let clean = m.clean_states(&base.0);
    assert_eq!(o.collected.len(), 2);
    assert_eq!(o.collected_from, vec![0, 1]);
    assert_eq!(o.collected[0].size(), vec![2, 5, D]);
    assert_close(&o.collected[0], &clean[1], 0.0);
    assert_close(&o.collected[1], &clean[0], 0.0);
    assert_close(
        logits(&o.intervened),
        logits(o.original.as_ref().unwrap()),
        0.0,
    );
    assert_eq!(
        m.n_calls(),
        2,
        "one clean run and one base run, no source run"
    );
    Ok(())
}

#[test]
fn collect_per_row_and_negative_positions_gathers_in_the_given_order() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let pv = IntervenableModel::new(&m, vec![Rc::new(out1(), Collect)])?;
    let o = pv.forward(
        &base,
        Sources::None,
        &CallOptions::new().locations(Locations::base_per_row(vec![vec![3, 0], vec![-1, 1]])),
    )?;
    let h = &m.clean_states(&base.0)[2];
    let got = &o.collected[0];
    assert_eq!(got.size(), vec![2, 2, D]);
    assert_close(&got.get(0).get(0), &h.get(0).get(3), 0.0);
    assert_close(&got.get(0).get(1), &h.get(0).get(0), 0.0);
    assert_close(&got.get(1).get(0), &h.get(1).get(4), 0.0);
    assert_close(&got.get(1).get(1), &h.get(1).get(1), 0.0);
    Ok(())
}

#[test]
fn collect_with_a_function_stores_its_result() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let enc = CollectWith::new("relu_sum", |x: &Tensor| {
        Ok(x.f_relu()?.f_sum_dim_intlist(-1, true, None)?)
    });
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), enc)])?;
    let o = pv.forward(&base, Sources::None, &CallOptions::new())?;
    let h = &m.clean_states(&base.0)[1];
    assert_eq!(o.collected[0].size(), vec![2, 5, 1]);
    assert_close(
        &o.collected[0],
        &h.relu().sum_dim_intlist(-1, true, None),
        1e-6,
    );
    Ok(())
}

#[test]
fn positions_out_of_range_name_position_and_length() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Zero::new())])?;
    for p in [5, -6] {
        match pv.forward(
            &base,
            Sources::None,
            &CallOptions::new().locations(Locations::base([p])),
        ) {
            Err(Error::PositionOutOfRange {
                position,
                len: 5,
                site,
            }) => {
                assert_eq!(position, p);
                assert_eq!(site, Site::new(0, SiteKind::BlockOutput));
            }
            other => panic!("{:?}", other.err()),
        }
    }
    // Ragged rows and a wrong row count are errors too.
    let ragged = CallOptions::new().locations(Locations::base_per_row(vec![vec![1, 2], vec![1]]));
    assert!(matches!(
        pv.forward(&base, Sources::None, &ragged),
        Err(Error::Invalid(_))
    ));
    let rows = CallOptions::new().locations(Locations::base_per_row(vec![vec![1]]));
    assert!(matches!(
        pv.forward(&base, Sources::None, &rows),
        Err(Error::Invalid(_))
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ add, zero

#[test]
fn add_everywhere_matches_a_hand_edit() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let v = vec_d([0.5, -1.0, 2.0, 0.25]);
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Add::new(v.copy()))])?;
    let o = pv.forward(&base, Sources::None, &CallOptions::new())?;
    let h = m.layer(1, &(m.layer(0, &m.embed(&base.0)) + &v));
    assert_close(logits(&o.intervened), &m.logits(&h), 1e-6);
    // Subtract undoes it.
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Subtract::new(v.copy())),
        ],
    )?;
    let o = pv.forward(
        &base,
        Sources::None,
        &CallOptions::new().output_original_output(true),
    )?;
    assert_close(
        logits(&o.intervened),
        logits(o.original.as_ref().unwrap()),
        1e-5,
    );
    Ok(())
}

#[test]
fn scatter_writes_each_row_at_its_own_positions() -> R {
    // pyvene's sticky use_fast would write row 1 at row 0's positions; we must not.
    let m = Mock::new(Kind::Float);
    let base = base2();
    let v = vec_d([1.0, 2.0, 3.0, 4.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let locs = vec![
        Locations::base_per_row(vec![vec![1], vec![3]]),
        Locations::all(),
    ];
    let o = pv.forward(
        &base,
        Sources::None,
        &CallOptions::new().locations_each(locs),
    )?;
    let clean = &m.clean_states(&base.0)[1];
    let diff = &o.collected[0] - clean;
    let expected = Tensor::zeros([2, 5, D], (Kind::Float, tch::Device::Cpu));
    expected.get(0).get(1).copy_(&v);
    expected.get(1).get(3).copy_(&v);
    assert_close(&diff, &expected, 1e-6);
    Ok(())
}

#[test]
fn subspaces_apply_per_row_not_as_a_union() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let pv = IntervenableModel::new(
        &m,
        vec![Rc::new(out0(), Zero::new()), Rc::new(out0(), Collect)],
    )?;
    let opts = CallOptions::new()
        .locations_each(vec![Locations::base([2]), Locations::base([2])])
        .subspaces_each(vec![
            Some(Subspaces::PerRow(vec![vec![0], vec![1, 3]])),
            None,
        ]);
    let o = pv.forward(&base, Sources::None, &opts)?;
    let got = &o.collected[0]; // [2, 1, D]
    let h = &m.clean_states(&base.0)[1];
    let row0 = h.get(0).get(2).copy();
    let _ = row0.get(0).fill_(0.0);
    let row1 = h.get(1).get(2).copy();
    let _ = row1.get(1).fill_(0.0);
    let _ = row1.get(3).fill_(0.0);
    assert_close(&got.get(0).get(0), &row0, 0.0);
    assert_close(&got.get(1).get(0), &row1, 0.0);
    // A subspace index beyond the width is an error.
    let bad = CallOptions::new().subspaces(Subspaces::Shared(vec![D]));
    assert!(matches!(
        pv.forward(&base, Sources::None, &bad),
        Err(Error::SubspaceOutOfRange { index: 4, width: 4 })
    ));
    Ok(())
}

#[test]
fn setters_at_one_site_compose_in_config_order() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let v = vec_d([1.0, -2.0, 0.5, 3.0]);
    let double = || {
        FnIntervention::new("double", InterventionRole::Sourceless, |b, _, _| {
            Ok(b.f_mul_scalar(2.0)?)
        })
    };
    let h0 = m.layer(0, &m.embed(&base.0));
    for (first_add, expected) in [(true, (&h0 + &v) * 2.0), (false, &h0 * 2.0 + &v)] {
        let cfg = if first_add {
            vec![
                Rc::new(out0(), Add::new(v.copy())),
                Rc::new(out0(), double()),
                Rc::new(out0(), Collect),
            ]
        } else {
            vec![
                Rc::new(out0(), double()),
                Rc::new(out0(), Add::new(v.copy())),
                Rc::new(out0(), Collect),
            ]
        };
        let pv = IntervenableModel::new(&m, cfg)?;
        let o = pv.forward(&base, Sources::None, &CallOptions::new())?;
        assert_close(&o.collected[0], &expected, 1e-6);
        assert_close(
            logits(&o.intervened),
            &m.logits(&m.layer(1, &expected)),
            1e-5,
        );
    }
    Ok(())
}

#[test]
fn add_in_f32_on_a_bf16_model_rounds_on_write_back() -> R {
    let m = Mock::new(Kind::BFloat16);
    let base = base2();
    let v = vec_d([0.013, -0.77, 1.0001, 0.333]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let o = pv.forward(&base, Sources::None, &CallOptions::new())?;
    let h = m.layer(0, &m.embed(&base.0));
    let expected = (h.to_kind(Kind::Float) + &v).to_kind(Kind::BFloat16);
    assert_eq!(o.collected[0].kind(), Kind::BFloat16);
    assert!(
        o.collected[0].equal(&expected),
        "f32 add then one rounding to bf16"
    );
    Ok(())
}

// ------------------------------------------------------------------------------ interchange

#[test]
fn vanilla_pairs_copy_source_positions_into_base_positions() -> R {
    let m = Mock::new(Kind::Float);
    let (base, src) = (base2(), src2());
    let pv = IntervenableModel::new(
        &m,
        vec![Rc::new(out0(), Vanilla::new()), Rc::new(out0(), Collect)],
    )?;
    let opts = CallOptions::new()
        .locations_each(vec![
            Locations::pairs_per_row(vec![vec![1, 2], vec![4, 3]], vec![vec![3, 0], vec![-1, 2]]),
            Locations::all(),
        ])
        .output_original_output(true);
    let o = pv.forward(&base, Sources::Shared(&src), &opts)?;
    let hb = &m.clean_states(&base.0)[1];
    let hs = &m.clean_states(&src.0)[1];
    let expected = hb.copy();
    expected.get(0).get(3).copy_(&hs.get(0).get(1));
    expected.get(0).get(0).copy_(&hs.get(0).get(2));
    expected.get(1).get(4).copy_(&hs.get(1).get(4));
    expected.get(1).get(2).copy_(&hs.get(1).get(3));
    assert_close(&o.collected[0], &expected, 0.0);
    assert_close(
        logits(&o.intervened),
        &m.logits(&m.layer(1, &expected)),
        1e-6,
    );
    // Positions not patched keep their clean logits exactly (position-wise model).
    assert_close(
        &logits(&o.intervened).get(0).get(1),
        &logits(o.original.as_ref().unwrap()).get(0).get(1),
        0.0,
    );
    // The source slice each intervention read: row 0 at positions [1, 2], row 1 at [4, 3];
    // none for the collect.
    let read = o.source_slices[0]
        .as_ref()
        .expect("the interchange read a source");
    let want = Tensor::stack(
        &[
            Tensor::stack(&[hs.get(0).get(1), hs.get(0).get(2)], 0),
            Tensor::stack(&[hs.get(1).get(4), hs.get(1).get(3)], 0),
        ],
        0,
    );
    assert_close(read, &want, 0.0);
    assert!(o.source_slices[1].is_none());
    // The source (stopped after layer 0), the clean run up to the hooked output (stopped
    // there too), then — the mock has no paired form — the rest of the clean run and the base
    // run, both resumed at layer 1.
    let calls = m.calls.borrow();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].stop_after_layer, Some(0));
    assert_eq!(calls[1].stop_after_layer, Some(0));
    assert_eq!(calls[2].stop_after_layer, None);
    assert_eq!(calls[3].stop_after_layer, None);
    Ok(())
}

/// With a model that stacks, an interchange with the clean run makes its source run and the
/// start of the clean run one call (rows of both, end-padded to the longer), with the same
/// results as separate calls: exactly, in this position-wise model.
#[test]
fn interchange_runs_source_and_clean_prefix_as_one_stacked_call() -> R {
    let longer_source = Input::new(&[&[2, 13, 14, 15, 1, 9, 9], &[2, 12, 10, 1, 0, 3, 4]]);
    let shorter_source = Input::new(&[&[2, 13, 14], &[2, 12, 10]]);
    for (src, src_len) in [(&src2(), 5), (&longer_source, 7), (&shorter_source, 3)] {
        let run = |m: &Mock| -> Result<_, Box<dyn std::error::Error>> {
            let pv = IntervenableModel::new(
                m,
                vec![Rc::new(out0(), Vanilla::new()), Rc::new(out0(), Collect)],
            )?;
            let opts = CallOptions::new()
                .locations_each(vec![
                    Locations::pairs_per_row(
                        vec![vec![1, 2], vec![0, 1]],
                        vec![vec![3, 0], vec![-1, 2]],
                    ),
                    Locations::all(),
                ])
                .output_original_output(true);
            Ok(pv.forward(&base2(), Sources::Shared(src), &opts)?)
        };
        let (separate, stacking) = (Mock::new(Kind::Float), Mock::stacking(Kind::Float));
        let (want, got) = (run(&separate)?, run(&stacking)?);
        assert_close(logits(&got.intervened), logits(&want.intervened), 0.0);
        assert_close(
            logits(got.original.as_ref().unwrap()),
            logits(want.original.as_ref().unwrap()),
            0.0,
        );
        assert_eq!(got.collected.len(), 1);
        assert_close(&got.collected[0], &want.collected[0], 0.0);
        let (read, wanted) = (
            got.source_slices[0].as_ref(),
            want.source_slices[0].as_ref(),
        );
        assert_close(
            read.expect("a source slice"),
            wanted.expect("a source slice"),
            0.0,
        );
        // Separate: source, clean prefix, clean rest, intervened (the mock resumes nothing).
        // Stacked: one call of 4 rows as long as the longer input, stopped after the hooked
        // layer, then the same two.
        assert_eq!(separate.n_calls(), 4);
        let calls = stacking.calls.borrow();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!((calls[0].batch, calls[0].chunk_len), (4, src_len.max(5)));
        assert_eq!(calls[0].stop_after_layer, Some(0));
        assert_eq!(calls[1].stop_after_layer, None);
    }
    Ok(())
}

/// Positions past the end of a stacked part are refused as in the input's own call, naming
/// the input's length, not the padded one.
#[test]
fn stacked_source_positions_are_checked_against_the_source_length() -> R {
    let shorter_source = Input::new(&[&[2, 13, 14], &[2, 12, 10]]);
    for m in [Mock::new(Kind::Float), Mock::stacking(Kind::Float)] {
        let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Vanilla::new())])?;
        let opts = CallOptions::new()
            .locations(Locations::pair(4, 1))
            .output_original_output(true);
        let err = pv
            .forward(&base2(), Sources::Shared(&shorter_source), &opts)
            .expect_err("source position 4 of 3 is refused");
        assert!(
            matches!(
                err,
                Error::PositionOutOfRange {
                    position: 4,
                    len: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn vanilla_with_subspaces_swaps_only_those_dims() -> R {
    let m = Mock::new(Kind::Float);
    let (base, src) = (base2(), src2());
    let pv = IntervenableModel::new(
        &m,
        vec![Rc::new(out0(), Vanilla::new()), Rc::new(out0(), Collect)],
    )?;
    let opts = CallOptions::new()
        .locations_each(vec![Locations::pair(1, 2), Locations::all()])
        .subspaces_each(vec![
            Some(Subspaces::PerRow(vec![vec![0, 2], vec![3]])),
            None,
        ]);
    let o = pv.forward(&base, Sources::Shared(&src), &opts)?;
    let hb = &m.clean_states(&base.0)[1];
    let hs = &m.clean_states(&src.0)[1];
    let expected = hb.copy();
    for (row, dims) in [(0i64, vec![0i64, 2]), (1, vec![3])] {
        for d in dims {
            expected
                .get(row)
                .get(2)
                .get(d)
                .copy_(&hs.get(row).get(1).get(d));
        }
    }
    assert_close(&o.collected[0], &expected, 0.0);
    Ok(())
}

#[test]
fn interchange_without_sources_is_an_error_and_runs_nothing() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Vanilla::new())])?;
    let err = pv
        .forward(
            &base2(),
            Sources::None,
            &CallOptions::new()
                .locations(Locations::pair(1, 1))
                .output_original_output(true),
        )
        .err();
    match err {
        Some(e @ Error::MissingSource { .. }) => assert!(e.to_string().contains("vanilla")),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.n_calls(), 0, "validation happens before any run");
    // Also with per-intervention sources where this one has none.
    let err = pv
        .forward(&base2(), Sources::Each(vec![None]), &CallOptions::new())
        .err();
    assert!(matches!(err, Some(Error::MissingSource { .. })));
    // And a wrong number of sources.
    let s = src2();
    let err = pv
        .forward(
            &base2(),
            Sources::Each(vec![Some(&s), Some(&s)]),
            &CallOptions::new(),
        )
        .err();
    assert!(matches!(err, Some(Error::Invalid(_))));
    Ok(())
}

#[test]
fn source_slice_of_another_shape_is_an_error() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Vanilla::new())])?;
    let short = Input::new(&[&[2, 3, 4], &[2, 5, 6]]);
    // Whole tensors of different lengths.
    match pv.forward(&base2(), Sources::Shared(&short), &CallOptions::new()) {
        Err(Error::Shape { expected, got, .. }) => {
            assert_eq!(expected, vec![2, 5, D]);
            assert_eq!(got, vec![2, 3, D]);
        }
        other => panic!("{:?}", other.err()),
    }
    Ok(())
}

#[test]
fn constant_source_writes_a_fixed_vector() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let v = vec_d([9.0, 8.0, 7.0, 6.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), ConstantSource::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let opts = CallOptions::new()
        .locations_each(vec![Locations::base([-2]), Locations::base([3])])
        .subspaces_each(vec![Some(Subspaces::Shared(vec![1])), None]);
    let o = pv.forward(&base, Sources::None, &opts)?;
    let h = &m.clean_states(&base.0)[1];
    let expected = h.narrow(1, 3, 1).copy();
    let _ = expected.narrow(2, 1, 1).fill_(8.0);
    assert_close(&o.collected[0], &expected, 0.0);
    Ok(())
}

// ------------------------------------------------------------------------------ modes

fn two_layer_vanilla(m: &Mock, mode: Mode) -> Result<IntervenableModel<'_, Mock>, Error> {
    Ok(IntervenableModel::new(
        m,
        vec![
            Rc::new(out0(), Vanilla::new()),
            Rc::new(out1(), Vanilla::new()),
        ],
    )?
    .with_mode(mode))
}

#[test]
fn parallel_mode_reads_each_source_clean() -> R {
    let m = Mock::new(Kind::Float);
    let (base, s0, s1) = (
        base2(),
        src2(),
        Input::new(&[&[2, 1, 1, 1, 1], &[2, 9, 9, 9, 9]]),
    );
    let pv = two_layer_vanilla(&m, Mode::Parallel)?;
    let opts =
        CallOptions::new().locations_each(vec![Locations::pair(1, 2), Locations::pair(3, 4)]);
    let o = pv.forward(&base, Sources::Each(vec![Some(&s0), Some(&s1)]), &opts)?;
    let a = m.clean_states(&s0.0)[1].narrow(1, 1, 1);
    let b = m.clean_states(&s1.0)[2].narrow(1, 3, 1);
    let mut h = m.layer(0, &m.embed(&base.0));
    h.narrow(1, 2, 1).copy_(&a);
    h = m.layer(1, &h);
    h.narrow(1, 4, 1).copy_(&b);
    assert_close(logits(&o.intervened), &m.logits(&h), 1e-6);
    assert_eq!(m.n_calls(), 3, "two source runs and the base run");
    // One shared source runs once for both.
    let o2 = pv.forward(&base, Sources::Shared(&s0), &opts)?;
    assert_eq!(m.n_calls(), 5);
    assert_eq!(m.calls.borrow()[3].stop_after_layer, Some(1));
    assert!(o2.intervened.is_some());
    Ok(())
}

#[test]
fn serial_mode_chains_source_0_to_source_1_to_base() -> R {
    // pyvene_check.py §6b: source_0[L0,pos1] -> source_1[L0,pos2]; intervened
    // source_1[L1,pos3] -> base[L1,pos4]. Intervention 0 is not active in the base run.
    let m = Mock::new(Kind::Float);
    let (base, s0, s1) = (
        base2(),
        src2(),
        Input::new(&[&[2, 1, 1, 1, 1], &[2, 9, 9, 9, 9]]),
    );
    let pv = two_layer_vanilla(&m, Mode::Serial)?;
    let opts =
        CallOptions::new().locations_each(vec![Locations::pair(1, 2), Locations::pair(3, 4)]);
    let o = pv.forward(&base, Sources::Each(vec![Some(&s0), Some(&s1)]), &opts)?;
    let a0 = m.clean_states(&s0.0)[1].narrow(1, 1, 1);
    let g = m.layer(0, &m.embed(&s1.0));
    g.narrow(1, 2, 1).copy_(&a0);
    let b2 = m.layer(1, &g).narrow(1, 3, 1);
    let h = m.layer(1, &m.layer(0, &m.embed(&base.0)));
    h.narrow(1, 4, 1).copy_(&b2);
    assert_close(logits(&o.intervened), &m.logits(&h), 1e-6);
    // Serial differs from parallel here: position 3 of source_1 at layer 1 is downstream of
    // the patch only if the patch position is 3; use pair (1, 3) to see it.
    let opts =
        CallOptions::new().locations_each(vec![Locations::pair(1, 3), Locations::pair(3, 4)]);
    let ser = pv.forward(&base, Sources::Each(vec![Some(&s0), Some(&s1)]), &opts)?;
    let par = two_layer_vanilla(&m, Mode::Parallel)?.forward(
        &base,
        Sources::Each(vec![Some(&s0), Some(&s1)]),
        &opts,
    )?;
    assert!(max_diff(logits(&ser.intervened), logits(&par.intervened)) > 1e-3);
    // Serial needs a source for every stage.
    let err = pv
        .forward(&base, Sources::Each(vec![Some(&s0), None]), &opts)
        .err();
    assert!(matches!(
        err,
        Some(Error::MissingSource { .. }) | Some(Error::Invalid(_))
    ));
    Ok(())
}

#[test]
fn collect_only_can_stop_early() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Collect)])?;
    let o = pv.forward(
        &base2(),
        Sources::None,
        &CallOptions::new().collect_only_stop_early(true),
    )?;
    assert!(o.intervened.is_none(), "stopped after layer 0: no logits");
    assert_eq!(o.collected[0].size(), vec![2, 5, D]);
    assert_eq!(m.calls.borrow()[0].stop_after_layer, Some(0));
    let o = pv.forward(&base2(), Sources::None, &CallOptions::new())?;
    assert!(o.intervened.is_some());
    Ok(())
}

#[test]
fn head_components_split_and_select_heads() -> R {
    let m = Mock::new(Kind::Float);
    let base = base2();
    let comp = Component::typed("head_attention_value_output", 1);
    let pv = IntervenableModel::new(
        &m,
        vec![Rc::new(comp.clone(), Collect), Rc::new(comp, Zero::new())],
    )?;
    let opts = CallOptions::new()
        .locations_each(vec![
            Locations::base([0, 2]).with_heads([1]),
            Locations::base_per_row(vec![vec![2], vec![4]])
                .with_heads_per_row(vec![vec![1], vec![0]]),
        ])
        .output_original_output(true);
    let o = pv.forward(&base, Sources::None, &opts)?;
    // The layer-1 input, split [B, S, 2, 2] -> heads.
    let x = m.clean_states(&base.0)[1].reshape([2, 5, 2, 2]);
    let got = &o.collected[0];
    assert_eq!(got.size(), vec![2, 1, 2, 2], "[B, nh, K, head_dim]");
    assert_close(&got.get(0).get(0).get(1), &x.get(0).get(2).get(1), 0.0);
    assert_close(&got.get(1).get(0).get(0), &x.get(1).get(0).get(1), 0.0);
    // Zero wrote row 0 / position 2 / head 1 and row 1 / position 4 / head 0, nothing else.
    let y = x.copy();
    let _ = y.get(0).get(2).get(1).fill_(0.0);
    let _ = y.get(1).get(4).get(0).fill_(0.0);
    let expected = m.logits(&m.layer(1, &y.reshape([2, 5, 4])));
    assert_close(logits(&o.intervened), &expected, 1e-6);
    // A head out of range.
    let bad = CallOptions::new().locations(Locations::base([0]).with_heads([2]));
    assert!(matches!(
        pv.forward(&base, Sources::None, &bad),
        Err(Error::HeadOutOfRange {
            head: 2,
            heads: 2,
            ..
        })
    ));
    // Heads on a component without a head split.
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Collect)])?;
    assert!(matches!(
        pv.forward(&base, Sources::None, &bad),
        Err(Error::Invalid(_))
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ generation

const N: usize = 4;

fn gen_cfg() -> GenConfig {
    GenConfig { max_new_tokens: N }
}

fn prompt() -> Input {
    Input::new(&[&[2, 5, 7], &[2, 3, 4]])
}

#[test]
fn generate_all_positions_on_prompt_steers_every_call() -> R {
    // Tutorial steering: unit_locations=None, intervene_on_prompt=True.
    let m = Mock::new(Kind::Float);
    let v = vec_d([3.0, -3.0, 1.0, 2.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let p = prompt();
    let o = pv.generate(
        &p,
        Sources::None,
        &CallOptions::new()
            .intervene_on_prompt(true)
            .output_original_output(true),
        &gen_cfg(),
    )?;
    let hand = generate_by_hand(&m, &p.0, N, 0, &|h, _| h + &v);
    assert!(o.intervened.equal(&hand));
    let clean = generate_by_hand(&m, &p.0, N, 0, &|h, _| h.shallow_clone());
    assert!(o.original.as_ref().unwrap().equal(&clean));
    let shapes: Vec<Vec<i64>> = o.collected.iter().map(Tensor::size).collect();
    assert_eq!(
        shapes,
        vec![vec![2, 3, D], vec![2, 1, D], vec![2, 1, D], vec![2, 1, D]]
    );
    Ok(())
}

#[test]
fn generate_all_positions_not_on_prompt_hits_chunk_position_0_of_decode_calls() -> R {
    let m = Mock::new(Kind::Float);
    let v = vec_d([3.0, -3.0, 1.0, 2.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let p = prompt();
    let o = pv.generate(&p, Sources::None, &CallOptions::new(), &gen_cfg())?;
    let hand = generate_by_hand(&m, &p.0, N, 0, &|h, call| {
        if call == 0 {
            h.shallow_clone()
        } else {
            h + &v
        }
    });
    assert!(o.intervened.equal(&hand));
    let shapes: Vec<Vec<i64>> = o.collected.iter().map(Tensor::size).collect();
    assert_eq!(shapes, vec![vec![2, 1, D]; N - 1], "the prompt is skipped");
    Ok(())
}

#[test]
fn generate_given_positions_on_prompt_only_touch_the_prompt() -> R {
    let m = Mock::new(Kind::Float);
    let v = vec_d([30.0, -30.0, 10.0, 20.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let p = prompt();
    let opts = CallOptions::new()
        .locations_each(vec![Locations::base([-1]), Locations::base([0, -1])])
        .intervene_on_prompt(true);
    let o = pv.generate(&p, Sources::None, &opts, &gen_cfg())?;
    let hand = generate_by_hand(&m, &p.0, N, 0, &|h, call| {
        if call == 0 {
            let h = h.copy();
            let last = h.narrow(1, 2, 1) + &v;
            h.narrow(1, 2, 1).copy_(&last);
            h
        } else {
            h.shallow_clone()
        }
    });
    assert!(o.intervened.equal(&hand));
    assert_eq!(o.collected.len(), 1);
    assert_eq!(o.collected[0].size(), vec![2, 2, D]);
    Ok(())
}

#[test]
fn generate_given_positions_not_on_prompt_index_the_decode_chunk() -> R {
    let m = Mock::new(Kind::Float);
    let v = vec_d([3.0, -3.0, 1.0, 2.0]);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect),
        ],
    )?;
    let p = prompt();
    let opts = CallOptions::new().locations(Locations::base([0]));
    let o = pv.generate(&p, Sources::None, &opts, &gen_cfg())?;
    let hand = generate_by_hand(&m, &p.0, N, 0, &|h, call| {
        if call == 0 {
            h.shallow_clone()
        } else {
            h + &v
        }
    });
    assert!(o.intervened.equal(&hand));
    assert_eq!(o.collected.len(), N - 1);
    // Position 2 of a one-token chunk: a clear error at the first decode call.
    let opts = CallOptions::new().locations(Locations::base([2]));
    match pv.generate(&p, Sources::None, &opts, &gen_cfg()) {
        Err(
            e @ Error::DecodePositionOutOfRange {
                position: 2,
                len: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("decode chunk"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }
    Ok(())
}

#[test]
fn generate_runs_sources_once_before_generation() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(&m, vec![Rc::new(out0(), Vanilla::new())])?;
    let p = prompt();
    let src = Input::new(&[&[2, 13, 14], &[2, 12, 10]]);
    let opts = CallOptions::new()
        .locations(Locations::pair(1, 2))
        .intervene_on_prompt(true);
    let o = pv.generate(&p, Sources::Shared(&src), &opts, &gen_cfg())?;
    let a = m.clean_states(&src.0)[1].narrow(1, 1, 1);
    let hand = generate_by_hand(&m, &p.0, N, 0, &|h, call| {
        let h = h.copy();
        if call == 0 {
            h.narrow(1, 2, 1).copy_(&a);
        }
        h
    });
    assert!(o.intervened.equal(&hand));
    assert_eq!(
        m.n_calls(),
        1 + N,
        "one source run, then the prompt and N-1 decode calls"
    );
    assert!(pv.generate(&p, Sources::None, &opts, &gen_cfg()).is_err());
    Ok(())
}

#[test]
fn collected_list_is_grouped_by_intervention_then_call() -> R {
    let m = Mock::new(Kind::Float);
    let pv = IntervenableModel::new(
        &m,
        vec![
            Rc::new(out1(), Collect),
            Rc::new(Component::typed("block_input", 0), Collect),
        ],
    )?;
    let p = prompt();
    let o = pv.generate(
        &p,
        Sources::None,
        &CallOptions::new().intervene_on_prompt(true),
        &gen_cfg(),
    )?;
    assert_eq!(o.collected.len(), 2 * N);
    assert_eq!(o.collected_from, [vec![0; N], vec![1; N]].concat());
    assert_eq!(o.collected_for(1).len(), N);
    assert_eq!(o.collected[N].size(), vec![2, 3, D]);
    assert_eq!(L, 2);
    Ok(())
}

#[test]
fn decode_steps_are_replayable_only_when_every_intervention_acting_there_is() -> R {
    let m = Mock::new(Kind::Float);
    let p = prompt();
    let v = vec_d([3.0, -3.0, 1.0, 2.0]);
    let on_prompt = CallOptions::new().intervene_on_prompt(true);
    let answer = |configs: Vec<Rc>, options: &CallOptions| -> Result<bool, Error> {
        IntervenableModel::new(&m, configs)?.generate(&p, Sources::None, options, &gen_cfg())?;
        Ok(*m.replayable.borrow().last().unwrap_or(&false))
    };
    assert!(answer(vec![], &on_prompt)?, "no interventions");
    assert!(answer(
        vec![Rc::new(out0(), Add::new(v.copy()))],
        &on_prompt
    )?);
    assert!(answer(
        vec![
            Rc::new(out1(), Zero::new()),
            Rc::new(out0(), Subtract::new(v.copy()))
        ],
        &CallOptions::new()
    )?);
    // A collect acting at decode steps would collect nothing on a replay.
    assert!(!answer(
        vec![
            Rc::new(out0(), Add::new(v.copy())),
            Rc::new(out0(), Collect)
        ],
        &on_prompt
    )?);
    // Given positions with intervene_on_prompt act on the prompt alone.
    assert!(answer(
        vec![Rc::new(out0(), Collect)],
        &on_prompt.clone().locations(Locations::base([1]))
    )?);
    // A closure is opaque unless it says otherwise.
    let double = || {
        FnIntervention::new("double", InterventionRole::Sourceless, |b, _, _| {
            Ok(b.f_mul_scalar(2.0)?)
        })
    };
    assert!(!answer(vec![Rc::new(out0(), double())], &on_prompt)?);
    assert!(answer(
        vec![Rc::new(out0(), double().with_replay(true))],
        &on_prompt
    )?);
    Ok(())
}

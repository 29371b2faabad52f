//! Names: local paths, hub paths through a fake Hugging Face cache, canonical shorthands.

use std::path::Path;

use intervene::{Site, SiteKind};
use sae::{canonical_lookup, resolve, Error, HubOptions, Sae, SaeName};
use tch::Device;

use crate::common::F32;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A cache laid out like `huggingface_hub`'s: refs/main -> commit, snapshots/<commit>/<file>
/// (a symlink into blobs/, as the hub writes it).
fn fake_cache(root: &Path, repo: &str, file: &str) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    let blob = repo_dir.join("blobs/abc123");
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::copy(F32.sae_path(), &blob).unwrap();
    let snap = repo_dir.join("snapshots").join(COMMIT).join(file);
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, &snap).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, &snap).unwrap();
}

#[test]
fn parse_tells_the_forms_apart() {
    assert_eq!(
        SaeName::parse("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71").unwrap(),
        SaeName::Hub {
            repo: "google/gemma-scope-2b-pt-res".into(),
            file: "layer_20/width_16k/average_l0_71/params.npz".into()
        }
    );
    assert_eq!(
        SaeName::parse(
            "hf://google/gemma-scope-2b-pt-mlp/layer_3/width_65k/average_l0_10/params.npz"
        )
        .unwrap(),
        SaeName::Hub {
            repo: "google/gemma-scope-2b-pt-mlp".into(),
            file: "layer_3/width_65k/average_l0_10/params.npz".into()
        }
    );
    assert_eq!(
        SaeName::parse("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical").unwrap(),
        SaeName::Canonical {
            release: "gemma-scope-2b-pt-res".into(),
            layer: 20,
            width: "16k".into()
        }
    );
    let local = F32.sae_path();
    assert_eq!(
        SaeName::parse(local.to_str().unwrap()).unwrap(),
        SaeName::Local(local.clone())
    );
    for bad in [
        "",
        "/no/such/params.npz",
        "./nope",
        "just-a-word",
        "gemma-scope-2b-pt-res-canonical/layer_x/width_16k/canonical",
        "gemma-scope-2b-pt-res-canonical/layer_20/width_16k",
    ] {
        assert!(
            matches!(SaeName::parse(bad), Err(Error::UnknownName { .. })),
            "{bad}"
        );
    }
}

#[test]
fn site_follows_from_the_name() {
    let hint = |n: &str| SaeName::parse(n).unwrap().site_hint().site();
    assert_eq!(
        hint("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"),
        Some(Site::new(20, SiteKind::BlockOutput))
    );
    assert_eq!(
        hint("google/gemma-scope-2b-pt-mlp/layer_7/width_16k/average_l0_60"),
        Some(Site::new(7, SiteKind::PostFeedforwardNormOutput))
    );
    assert_eq!(
        hint("google/gemma-scope-9b-pt-att/layer_5/width_16k/average_l0_60"),
        Some(Site::new(5, SiteKind::AttentionValueOutput))
    );
    assert_eq!(
        hint("google/gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6"),
        Some(Site::new(0, SiteKind::BlockInput))
    );
    assert_eq!(
        hint("gemma-scope-9b-it-res-canonical/layer_9/width_16k/canonical"),
        Some(Site::new(9, SiteKind::BlockOutput))
    );
    assert_eq!(
        hint("google/gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_60"),
        None
    );
    assert_eq!(
        hint(F32.sae_path().to_str().unwrap()),
        Some(Site::new(2, SiteKind::BlockOutput))
    );
}

#[test]
fn canonical_table_rows() {
    let l0 = |r: &str, l: usize, w: &str| canonical_lookup(r, l, w).unwrap().l0;
    // Reference §3.5.
    assert_eq!(l0("gemma-scope-2b-pt-res", 20, "16k"), 71);
    assert_eq!(l0("gemma-scope-2b-pt-res-canonical", 0, "width_16k"), 105);
    assert_eq!(l0("gemma-scope-2b-pt-res", 25, "16k"), 116);
    assert_eq!(l0("gemma-scope-2b-pt-res", 20, "65k"), 114);
    assert_eq!(l0("gemma-scope-2b-pt-res", 12, "1m"), 107);
    assert_eq!(l0("gemma-scope-2b-pt-res", 12, "262k"), 121);
    assert_eq!(l0("gemma-scope-2b-pt-mlp", 20, "16k"), 109);
    assert_eq!(l0("gemma-scope-2b-pt-att", 20, "16k"), 62);
    assert_eq!(l0("gemma-scope-9b-pt-res", 20, "16k"), 68);
    assert_eq!(l0("gemma-scope-9b-pt-res", 41, "131k"), 84);
    assert_eq!(l0("gemma-scope-9b-pt-res", 31, "1m"), 77);
    assert_eq!(l0("gemma-scope-9b-it-res", 20, "131k"), 81);
    assert_eq!(l0("gemma-scope-27b-pt-res", 22, "131k"), 82);
    let e = canonical_lookup("gemma-scope-2b-pt-res", 20, "16k").unwrap();
    assert_eq!(e.repo(), "google/gemma-scope-2b-pt-res");
    assert_eq!(e.folder(), "layer_20/width_16k/average_l0_71");
    assert!(matches!(
        canonical_lookup("gemma-scope-2b-pt-res", 26, "16k"),
        Err(Error::CanonicalNotFound { .. })
    ));
    assert!(matches!(
        canonical_lookup("gemma-scope-2b-pt-res", 20, "1m"),
        Err(Error::CanonicalNotFound { .. })
    ));
    assert!(sae::name::canonical_table().unwrap().len() > 400);
}

#[test]
fn hub_path_and_canonical_resolve_from_a_fake_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = "google/gemma-scope-2b-pt-res";
    let file = "layer_20/width_16k/average_l0_71/params.npz";
    fake_cache(cache.path(), repo, file);
    let opts = HubOptions::offline_in(cache.path());
    let by_hub = resolve(
        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
        &opts,
    )
    .unwrap();
    let snap = cache
        .path()
        .join("models--google--gemma-scope-2b-pt-res/snapshots")
        .join(COMMIT)
        .join(file);
    assert_eq!(by_hub.path, snap);
    let by_canon = resolve(
        "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical",
        &opts,
    )
    .unwrap();
    assert_eq!(by_canon.path, snap);
    for r in [&by_hub, &by_canon] {
        let sae = Sae::load(r, Device::Cpu).unwrap();
        assert_eq!(sae.site(), Some(Site::new(20, SiteKind::BlockOutput)));
        assert_eq!(sae.d_in(), 64);
    }
    // Not offline: a cache hit never touches the network either.
    let online = HubOptions {
        offline: false,
        ..HubOptions::offline_in(cache.path())
    };
    assert_eq!(
        resolve(
            "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
            &online
        )
        .unwrap()
        .path,
        snap
    );
    // A pinned commit resolves without refs.
    let pinned = HubOptions {
        revision: COMMIT.into(),
        ..HubOptions::offline_in(cache.path())
    };
    assert_eq!(
        resolve(
            "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
            &pinned
        )
        .unwrap()
        .path,
        snap
    );
}

#[test]
fn offline_miss_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions::offline_in(cache.path());
    // No repo at all.
    let err = resolve(
        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
        &opts,
    )
    .unwrap_err();
    match &err {
        Error::Hub(scope_hub::Error::NotCached {
            repo,
            file,
            cache_dir,
            ..
        }) => {
            assert_eq!(repo, "google/gemma-scope-2b-pt-res");
            assert_eq!(file, "layer_20/width_16k/average_l0_71/params.npz");
            assert_eq!(cache_dir, cache.path());
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("HF_HUB_OFFLINE") && msg.contains("google/gemma-scope-2b-pt-res/layer_20"),
        "{msg}"
    );
    // The repo is cached but not this file.
    fake_cache(
        cache.path(),
        "google/gemma-scope-2b-pt-res",
        "layer_20/width_16k/average_l0_71/params.npz",
    );
    let err = resolve(
        "gemma-scope-2b-pt-res-canonical/layer_19/width_16k/canonical",
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Hub(scope_hub::Error::NotCached { file, .. }) if file == "layer_19/width_16k/average_l0_73/params.npz"),
        "{err}"
    );
    // A canonical name with no table row fails before any lookup.
    assert!(matches!(
        resolve(
            "gemma-scope-2b-pt-res-canonical/layer_30/width_16k/canonical",
            &opts
        ),
        Err(Error::CanonicalNotFound { .. })
    ));
}

/// Online, hub paths and canonical names download into the cache (a local stand-in for the
/// Hub serves the fixture SAE); once cached, no name asks the Hub again. A SAELens file needs
/// its `cfg.json`, fetched first: without one on the Hub the error names it.
#[test]
fn hub_path_and_canonical_download_when_online() {
    let hub = scope_hub::mock::MockHub::start().unwrap();
    let repo = "google/gemma-scope-2b-pt-res";
    let npz = std::fs::read(F32.sae_path()).unwrap();
    hub.add(
        repo,
        "layer_20/width_16k/average_l0_71/params.npz",
        npz.clone(),
    );
    hub.add(
        repo,
        "saelens/layer_20/sae_weights.safetensors",
        b"{}".to_vec(),
    );
    let cache = tempfile::tempdir().unwrap();
    let online = HubOptions {
        offline: false,
        endpoint: Some(hub.endpoint().to_string()),
        ..HubOptions::offline_in(cache.path())
    };

    let by_hub = resolve(
        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
        &online,
    )
    .unwrap();
    assert!(by_hub.path.starts_with(cache.path()));
    assert_eq!(std::fs::read(&by_hub.path).unwrap(), npz);
    let sae = Sae::load(&by_hub, Device::Cpu).unwrap();
    assert_eq!(sae.site(), Some(Site::new(20, SiteKind::BlockOutput)));

    let asked = hub.requests();
    let by_canon = resolve(
        "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical",
        &online,
    )
    .unwrap();
    assert_eq!(by_canon.path, by_hub.path);
    assert_eq!(
        hub.requests(),
        asked,
        "the canonical name is served from the cache"
    );

    let err = resolve(
        "hf://google/gemma-scope-2b-pt-res/saelens/layer_20/sae_weights.safetensors",
        &online,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Hub(scope_hub::Error::Download { file, .. }) if file == "saelens/layer_20/cfg.json"),
        "{err}"
    );
}

/// Models and SAEs resolve through one cache with one token: both crates hand out the same
/// `scope_hub::HubOptions` (its environment rules are tested in `scope-hub`).
#[test]
fn models_and_saes_share_one_hub_options_type() {
    let options: gemma_model::HubOptions = sae::HubOptions::offline_in("/cache");
    assert_eq!(options, scope_hub::HubOptions::offline_in("/cache"));
}

//! Where Hub files come from: the environment rules, the cache layout, offline misses, and
//! downloads from the local stand-in for the Hub (`scope_hub::mock`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use scope_hub::{is_repo_id, mock, repo_folder, Error, HubOptions, HubRepo};

/// Variables as `(name, value)` pairs.
type Env<'a> = &'a [(&'a str, &'a str)];

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn vars<'a>(env: Env<'a>) -> impl Fn(&str) -> Option<String> + 'a {
    |key| {
        env.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn the_cache_follows_huggingface_hub_rules() {
    let cases: [(Env<'_>, &str); 6] = [
        (&[("HOME", "/home/u")], "/home/u/.cache/huggingface/hub"),
        (
            &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")],
            "/xdg/huggingface/hub",
        ),
        (&[("HF_HOME", "/hf"), ("XDG_CACHE_HOME", "/xdg")], "/hf/hub"),
        (&[("HF_HUB_CACHE", "/cache"), ("HF_HOME", "/hf")], "/cache"),
        // Blank counts as unset.
        (
            &[("HF_HOME", "  "), ("HOME", "/h")],
            "/h/.cache/huggingface/hub",
        ),
        (&[], "./.cache/huggingface/hub"),
    ];
    for (env, cache) in cases {
        let options = HubOptions::from_vars(vars(env));
        assert_eq!(options.cache_dir, PathBuf::from(cache), "{env:?}");
        assert_eq!(options.revision, "main");
        assert!(options.progress);
    }
}

#[test]
fn the_token_comes_from_the_variables_then_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("my-token");
    std::fs::write(&token_file, "  from-file \n").unwrap();
    let token_path = token_file.to_string_lossy().into_owned();
    std::fs::write(dir.path().join("token"), "home-file").unwrap();
    let hf_home = dir.path().to_string_lossy().into_owned();
    let cases: [(Env<'_>, Option<&str>); 5] = [
        (
            &[("HF_TOKEN", " t1 "), ("HUGGING_FACE_HUB_TOKEN", "t2")],
            Some("t1"),
        ),
        (
            &[("HUGGING_FACE_HUB_TOKEN", "t2"), ("HF_HOME", "/nowhere")],
            Some("t2"),
        ),
        (
            &[("HF_TOKEN_PATH", &token_path), ("HF_HOME", "/nowhere")],
            Some("from-file"),
        ),
        (&[("HF_HOME", &hf_home)], Some("home-file")),
        (&[("HF_HOME", "/nowhere")], None),
    ];
    for (env, token) in cases {
        assert_eq!(
            HubOptions::from_vars(vars(env)).token.as_deref(),
            token,
            "{env:?}"
        );
    }
}

#[test]
fn offline_and_endpoint() {
    for (value, offline) in [
        ("1", true),
        ("YES", true),
        ("on", true),
        ("0", false),
        ("", false),
    ] {
        let options = HubOptions::from_vars(vars(&[("HF_HUB_OFFLINE", value)]));
        assert_eq!(options.offline, offline, "HF_HUB_OFFLINE={value:?}");
    }
    let options = HubOptions::from_vars(vars(&[("HF_ENDPOINT", "https://mirror")]));
    assert_eq!(options.endpoint.as_deref(), Some("https://mirror"));
}

#[test]
fn repo_ids_are_owner_slash_name() {
    for id in ["google/gemma-2-2b", "a/b"] {
        assert!(is_repo_id(id), "{id}");
    }
    for not in ["gemma", "a/b/c", "/b", "a/", "./x", "../x", ""] {
        assert!(!is_repo_id(not), "{not}");
    }
}

fn fake_cache(cache: &Path, repo: &str, file: &str) -> PathBuf {
    let folder = repo_folder(cache, repo);
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), format!("{COMMIT}\n")).unwrap();
    let path = folder.join("snapshots").join(COMMIT).join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"x").unwrap();
    path
}

#[test]
fn cached_files_come_from_the_snapshot_a_ref_or_commit_names() {
    let cache = tempfile::tempdir().unwrap();
    let path = fake_cache(cache.path(), "google/gemma-2-2b", "sub/config.json");
    assert!(path.starts_with(cache.path().join("models--google--gemma-2-2b/snapshots")));
    let offline = HubOptions::offline_in(cache.path());
    assert_eq!(
        HubRepo::new(&offline, "google/gemma-2-2b")
            .get("sub/config.json")
            .unwrap(),
        path
    );
    let pinned = HubOptions {
        revision: COMMIT.into(),
        ..offline.clone()
    };
    assert_eq!(
        HubRepo::new(&pinned, "google/gemma-2-2b")
            .get("sub/config.json")
            .unwrap(),
        path
    );
    // Online, a cache hit is served without building a client (the endpoint is unreachable).
    let online = HubOptions {
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..offline
    };
    assert_eq!(
        HubRepo::new(&online, "google/gemma-2-2b")
            .get("sub/config.json")
            .unwrap(),
        path
    );
}

#[test]
fn an_offline_miss_names_the_repo_the_file_and_what_was_missing() {
    let cache = tempfile::tempdir().unwrap();
    let offline = HubOptions::offline_in(cache.path());
    let err = HubRepo::new(&offline, "google/gemma-2-2b")
        .get("config.json")
        .unwrap_err();
    let Error::NotCached {
        repo,
        file,
        cache_dir,
        reason,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(
        (repo.as_str(), file.as_str()),
        ("google/gemma-2-2b", "config.json")
    );
    assert_eq!(cache_dir, cache.path());
    assert!(reason.contains("refs"), "{reason}");
    let message = err.to_string();
    assert!(
        message.contains("google/gemma-2-2b/config.json") && message.contains("HF_HUB_OFFLINE"),
        "{message}"
    );

    // The repository is cached, this file is not.
    fake_cache(cache.path(), "google/gemma-2-2b", "config.json");
    let err = HubRepo::new(&offline, "google/gemma-2-2b")
        .get("tokenizer.json")
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotCached { file, reason, .. } if file == "tokenizer.json" && reason.contains("does not exist")),
        "{err}"
    );
}

#[test]
fn an_unreachable_hub_is_a_download_error_naming_the_file() {
    let cache = tempfile::tempdir().unwrap();
    let online = HubOptions {
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubOptions::offline_in(cache.path())
    };
    let err = HubRepo::new(&online, "google/gemma-2-2b")
        .get("config.json")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Download { repo, file, .. } if repo == "google/gemma-2-2b" && file == "config.json"),
        "{err}"
    );
}

fn online(cache: &Path, hub: &mock::MockHub) -> HubOptions {
    HubOptions {
        offline: false,
        endpoint: Some(hub.endpoint().to_string()),
        ..HubOptions::offline_in(cache)
    }
}

/// A download lands in the cache in `huggingface_hub`'s layout (blob, snapshot link, ref), so
/// the next lookup (offline, or by Python) finds it without asking the Hub again.
#[test]
fn a_download_fills_the_cache_that_later_lookups_read() {
    let hub = mock::MockHub::start().unwrap();
    let config = b"{\"model_type\": \"gemma2\"}".to_vec();
    hub.add("google/gemma-2-2b", "config.json", config.clone());
    hub.add(
        "google/gemma-2-2b",
        "sub/dir/tokenizer.json",
        vec![7; 100_000],
    );
    let cache = tempfile::tempdir().unwrap();
    let options = online(cache.path(), &hub);
    let repo = HubRepo::new(&options, "google/gemma-2-2b");

    let path = repo.get("config.json").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), config);
    let folder = repo_folder(cache.path(), "google/gemma-2-2b");
    assert_eq!(
        path,
        folder
            .join("snapshots")
            .join(mock::MOCK_COMMIT)
            .join("config.json")
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main"))
            .unwrap()
            .trim(),
        mock::MOCK_COMMIT
    );
    let nested = repo.get("sub/dir/tokenizer.json").unwrap();
    assert_eq!(std::fs::read(nested).unwrap(), vec![7; 100_000]);

    let asked = hub.requests();
    assert_eq!(
        repo.get("config.json").unwrap(),
        path,
        "a second get is a cache hit"
    );
    let offline = HubOptions::offline_in(cache.path());
    assert_eq!(
        HubRepo::new(&offline, "google/gemma-2-2b")
            .get("config.json")
            .unwrap(),
        path
    );
    assert_eq!(hub.requests(), asked, "cache hits never reach the Hub");
}

#[test]
fn a_file_the_hub_does_not_have_is_a_download_error() {
    let hub = mock::MockHub::start().unwrap();
    hub.add("google/gemma-2-2b", "config.json", b"{}".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let options = online(cache.path(), &hub);
    let err = HubRepo::new(&options, "google/gemma-2-2b")
        .get("model.safetensors")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Download { repo, file, .. } if repo == "google/gemma-2-2b" && file == "model.safetensors"),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("404"), "{message}");
}

/// Gemma is gated: the token must reach the Hub with every request.
#[test]
fn the_token_goes_with_every_request() {
    let hub = mock::MockHub::start().unwrap();
    hub.add("google/gemma-2-2b", "config.json", b"{}".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions {
        token: Some("hf_secret".into()),
        ..online(cache.path(), &hub)
    };
    HubRepo::new(&options, "google/gemma-2-2b")
        .get("config.json")
        .unwrap();
    let seen = hub.authorizations();
    assert_eq!(seen.len(), hub.requests(), "{seen:?}");
    assert!(seen.iter().all(|a| a == "Bearer hf_secret"), "{seen:?}");
}

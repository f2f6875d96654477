//! The embedded cache: signed, atomic, checked uploads; forged uploads refused before a
//! byte is read; publishers cannot point the server at other URLs.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use std::sync::Arc;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::test]
async fn embedded_cache_uploads_are_signed_atomic_and_checked() {
    let api = Api::new(ServiceConfig::default()).await;
    let nar = b"pretend this is a NAR of the system".to_vec();
    let nar_path = format!("/cache/nar/{}", nar_name(&nar));
    let cache_files = || -> Vec<String> {
        let mut all = Vec::new();
        for dir in ["cache", "cache/nar", "cache-uploads"] {
            for e in std::fs::read_dir(api.cache_dir.path().join(dir)).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    all.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        all.sort();
        all
    };
    let empty = cache_files();
    assert_eq!(empty, ["cache/nix-cache-info"]);

    // Reads need no signature; nix-cache-info is there from the start.
    let resp = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/cache/nix-cache-info")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        )
        .unwrap()
        .contains("StoreDir: /nix/store")
    );

    // Refused uploads leave nothing behind.
    for (sign, want) in [
        (Sign::None, StatusCode::UNAUTHORIZED),
        (Sign::Corrupted(&api.publisher), StatusCode::UNAUTHORIZED),
        (Sign::By(&api.viewer), StatusCode::FORBIDDEN),
        (Sign::By(&api.host_a), StatusCode::FORBIDDEN),
        (Sign::Stale(&api.admin), StatusCode::UNAUTHORIZED),
    ] {
        let (s, v) = api.put(&nar_path, &nar, sign).await;
        assert_eq!(s, want, "{v}");
    }
    let (s, v) = api
        .put(&nar_path, b"other bytes", Sign::By(&api.publisher))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nar_mismatch",
        "content does not match the name",
    );
    assert_eq!(cache_files(), empty);

    // An upload whose connection breaks mid-NAR: nothing visible, no temporary file left.
    let mut broken = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    let half = nar[..nar.len() / 2].to_vec();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(half), Err(std::io::Error::other("connection reset"))];
    *broken.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
    let (s, v) = api.send(broken).await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "body_unreadable",
        "interrupted upload",
    );
    assert_eq!(cache_files(), empty);

    // A narinfo before its NAR is refused; the retry in the right order succeeds.
    let narinfo = format!(
        "StorePath: {PATH_A}\nURL: nar/{}\nCompression: none\nNarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h\nNarSize: {}\nReferences: \n",
        nar_name(&nar),
        nar.len()
    );
    let narinfo_path = "/cache/q322pzff5rm7kwfwfbhcza6wr2b84wlm.narinfo";
    let (s, v) = api
        .put(narinfo_path, narinfo.as_bytes(), Sign::By(&api.publisher))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_nar",
        "narinfo first",
    );
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .put(
            "/cache/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo",
            narinfo.as_bytes(),
            Sign::By(&api.publisher),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_narinfo",
        "narinfo under another hash",
    );
    let (s, v) = api
        .put(narinfo_path, narinfo.as_bytes(), Sign::By(&api.publisher))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let resp = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri(narinfo_path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(served.as_ref(), narinfo.as_bytes());
    let (s, _) = api
        .put("/cache/../state.db", b"x", Sign::By(&api.publisher))
        .await;
    assert!(s.is_client_error());
}

/// A request body that counts the bytes the server pulls from it.
fn counting_body(pulled: Arc<std::sync::atomic::AtomicUsize>, chunks: usize) -> Body {
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        pulled.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(vec![0u8; 64 * 1024])
    }));
    Body::from_stream(stream)
}

#[tokio::test]
async fn forged_uploads_are_refused_before_any_byte_is_read() {
    let api = Api::new(ServiceConfig {
        max_uploads_per_key: 2,
        ..Default::default()
    })
    .await;
    let nar = b"the real NAR".to_vec();
    let nar_path = format!("/cache/nar/{}", nar_name(&nar));
    let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let uploads_dir = api.cache_dir.path().join("cache-uploads");
    // 64 MiB offered under a publisher's key id, with signatures that do not verify.
    for (sign, want) in [
        (Sign::Corrupted(&api.publisher), StatusCode::UNAUTHORIZED),
        (
            Sign::Claiming(&api.viewer, &api.publisher),
            StatusCode::UNAUTHORIZED,
        ),
        (Sign::Stale(&api.publisher), StatusCode::UNAUTHORIZED),
        (Sign::None, StatusCode::UNAUTHORIZED),
        (Sign::By(&api.viewer), StatusCode::FORBIDDEN),
    ] {
        let mut req = build("PUT", &nar_path, &nar, sign, None);
        *req.body_mut() = counting_body(pulled.clone(), 1024);
        let (s, v) = api.send(req).await;
        assert_eq!(s, want, "{v}");
    }
    // A declared size over the limit is refused before reading, with what to change.
    let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    req.headers_mut()
        .insert("content-length", ((1u64 << 20) + 1).into());
    *req.body_mut() = counting_body(pulled.clone(), 17);
    let (s, v) = api.send(req).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "declared size",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_upload_bytes")
    );
    assert_eq!(
        pulled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a refused upload's body was read"
    );
    assert_eq!(std::fs::read_dir(&uploads_dir).unwrap().count(), 0);
    // A body that differs from the digest its signature covers is not kept.
    let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    *req.body_mut() = Body::from(b"the evil NAR".to_vec());
    let (s, v) = api.send(req).await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "digest_mismatch",
        "swapped body",
    );
    assert_eq!(std::fs::read_dir(&uploads_dir).unwrap().count(), 0);
    // One key runs at most two uploads at once; a third waits its turn with a 429.
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
            *req.body_mut() = Body::from_stream(futures_util::stream::pending::<
                Result<Vec<u8>, std::io::Error>,
            >());
            tokio::spawn(api.router.clone().oneshot(req))
        })
        .collect();
    // Let both reach their stalled bodies before anything else takes a slot.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let third = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    assert_error(
        third.0,
        &third.1,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "third upload",
    );
    // Another publisher key is not affected.
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.admin)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Connections that go away free their slots.
    for task in stalled {
        task.abort();
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn publishers_cannot_make_the_server_fetch_other_urls() {
    let key = nix_meta::SecretKey::from_seed("fleet-1", &[4; 32]).public();
    let api = Api::new(ServiceConfig {
        caches: vec!["https://cache.example.org".into()],
        trusted_cache_keys: vec![key],
        ..Default::default()
    })
    .await;
    // An internal service the server can reach; it must never be contacted.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    internal.set_nonblocking(true).unwrap();
    let port = internal.local_addr().unwrap().port();
    for cache in [
        format!("http://127.0.0.1:{port}/admin"),
        "file:///etc".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let body =
            serde_json::to_vec(&json!({"hosts": {"host-a": PATH_A}, "cache": cache})).unwrap();
        api.refused(
            build(
                "POST",
                paths::RELEASES,
                &body,
                Sign::By(&api.publisher),
                None,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cache_not_allowed",
            &cache,
        )
        .await;
    }
    assert!(
        internal.accept().is_err(),
        "the server connected to the internal URL"
    );
}

/// A full disk while an upload is written: the publisher is told `disk_full` with what to do,
/// no partial file stays behind, and the server serves on. The upload directory is a real
/// 64 KiB tmpfs (the tests run as root).
#[tokio::test]
async fn a_full_disk_is_reported_and_leaves_nothing_behind() {
    let api = Api::new(ServiceConfig::default()).await;
    let uploads = api.cache_dir.path().join("cache-uploads");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&uploads)
        .status()
        .expect("mount (util-linux) must be installed");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let nar = vec![7u8; 512 * 1024];
    let nar_path = format!("/cache/nar/{}", nar_name(&nar));
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    let leftovers = std::fs::read_dir(&uploads).unwrap().count();
    let unmounted = std::process::Command::new("umount").arg(&uploads).status();
    assert_error(
        s,
        &v,
        StatusCode::INSUFFICIENT_STORAGE,
        "disk_full",
        "full disk",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yeet cache gc"),
        "{v}"
    );
    assert_eq!(leftovers, 0, "a partial upload stayed behind");
    assert!(unmounted.unwrap().success());
    let (s, _) = api
        .call("GET", paths::WHOAMI, b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// A narinfo for `nar` describing PATH_A, signed by `key` if given.
fn narinfo_for(nar: &[u8], key: Option<&nix_meta::SecretKey>) -> String {
    let mut info = nix_meta::NarInfo::parse(&format!(
        "StorePath: {PATH_A}\nURL: nar/{}\nCompression: none\nNarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h\nNarSize: {}\nReferences: \n",
        nar_name(nar),
        nar.len()
    ))
    .unwrap();
    if let Some(key) = key {
        info.sign(key);
    }
    info.to_text()
}

/// With trusted keys, the embedded cache accepts only narinfos one of them signed (hosts
/// would refuse anything else), and one request tells a publisher what the cache lacks and
/// which keys it wants, so that nothing untrusted is uploaded in the first place.
#[tokio::test]
async fn the_cache_says_what_it_lacks_and_accepts_only_trusted_narinfos() {
    let fleet_key = nix_meta::SecretKey::from_seed("fleet-1", &[4; 32]);
    let other_key = nix_meta::SecretKey::from_seed("other-1", &[5; 32]);
    let api = Api::new(ServiceConfig {
        trusted_cache_keys: vec![fleet_key.public()],
        ..Default::default()
    })
    .await;
    let nar = b"a NAR the publisher signed".to_vec();
    let (s, v) = api
        .put(
            &format!("/cache/nar/{}", nar_name(&nar)),
            &nar,
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let narinfo_path = "/cache/q322pzff5rm7kwfwfbhcza6wr2b84wlm.narinfo";
    for (key, case) in [
        (None, "unsigned"),
        (Some(&other_key), "signed by another key"),
    ] {
        let (s, v) = api
            .put(
                narinfo_path,
                narinfo_for(&nar, key).as_bytes(),
                Sign::By(&api.publisher),
            )
            .await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "untrusted_closure",
            case,
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains("fleet-1"),
            "{v}"
        );
    }
    let api = &api;
    let missing = |hashes: Vec<String>| {
        let body = serde_json::to_vec(&json!({ "hashes": hashes })).unwrap();
        async move {
            api.call(
                "POST",
                paths::CACHE_MISSING,
                &body,
                Sign::By(&api.publisher),
            )
            .await
        }
    };
    let present = "q322pzff5rm7kwfwfbhcza6wr2b84wlm".to_owned();
    let absent = "09kxyd68d2nylk7ims23pj3i09s4nnv9".to_owned();
    let (s, v) = missing(vec![present.clone(), absent.clone()]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["missing"],
        json!([present, absent]),
        "refused narinfos are not in the cache"
    );
    assert_eq!(v["trusted_keys"], json!([fleet_key.public().to_string()]));

    let (s, v) = api
        .put(
            narinfo_path,
            narinfo_for(&nar, Some(&fleet_key)).as_bytes(),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = missing(vec![present.clone(), absent.clone()]).await;
    assert_eq!(v["missing"], json!([absent]));

    // Hostile queries: path escapes, wrong lengths, a flood of hashes.
    for bad in [
        "../../state.db",
        "q322pzff5rm7kwfwfbhcza6wr2b84wl",
        "Q322PZFF5RM7KWFWFBHCZA6WR2B84WLM",
        "q322pzff5rm7kwfwfbhcza6wr2b84wl\u{1b}",
    ] {
        let (s, v) = missing(vec![bad.to_owned()]).await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_store_path",
            bad,
        );
    }
    // A flood of hashes: over the HTTP body limit here (64 KiB in these tests), and over
    // the per-request count under any body limit.
    let flood = vec![absent.clone(); yeet_proto::api::MAX_CACHE_QUERY_PATHS + 1];
    let (s, v) = missing(flood.clone()).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "a flood of hashes",
    );
    let publisher = yeet_server::service::Principal::User {
        name: "ci".into(),
        role: yeet_proto::api::Role::Publisher,
        key_id: "ci".into(),
        tags: Vec::new(),
    };
    let refused = api
        .service
        .cache_missing(
            &publisher,
            yeet_proto::api::CacheMissingRequest { hashes: flood },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("at most"), "{refused}");
}

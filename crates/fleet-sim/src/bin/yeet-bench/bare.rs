//! `yeet-bench bare-server`: the baseline for `checkins`. A bare axum endpoint on the same
//! HTTP stack and runtime settings as yeet-server (one tokio runtime, HTTP/1.1), doing the
//! same JSON work as a check-in, without authentication, state or database: it parses the
//! request into yeet's `CheckinRequest` and answers a `CheckinResponse`. It prints its
//! address and serves until killed.

use axum::Json;
use axum::routing::post;
use yeet_proto::api::{Action, CheckinRequest, CheckinResponse, paths};

async fn checkin(Json(req): Json<CheckinRequest>) -> Json<CheckinResponse> {
    Json(CheckinResponse {
        host: "bare".into(),
        action: Action::None,
        next_checkin_secs: 30,
        secrets_digest: String::new(),
        detached: None,
        desired_system: req.current_system,
        reboot: None,
    })
}

pub fn bare_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = axum::Router::new().route(paths::CHECKIN, post(checkin));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

//! The storage suite: every test runs on SQLite and on the real PostgreSQL, through the same
//! queries, so the two backends cannot drift apart.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, ev, host, registration};
use yeet_proto::api::{ActivationResult, HostPolicyChange, RebootPolicy, Role};
use yeet_server::store::Change;
use yeet_server::store::{
    ActivationRow, DetachmentRow, Enrolled, HostReport, LogQuery, NewLogLine, NewRelease,
    NodeEnrollment, Store, StoreError, UserChange, UserRefusal, Wire,
};

async fn migrations_are_idempotent(db: &TestDb) {
    let a = db.open().await;
    a.close().await;
    let b = db.open().await;
    assert!(b.list_hosts().await.unwrap().is_empty());
    b.close().await;
}

/// A server starting while `yeet-server admin add` runs (or two replicas starting at
/// once) opens the same fresh database twice at the same moment: each migration runs
/// once, and every opener gets the finished schema.
async fn stores_opened_at_once_on_a_fresh_database_migrate_once(db: &TestDb) {
    let opened = futures_util::future::join_all((0..4).map(|_| Store::open(&db.url, None))).await;
    for store in opened {
        let store = store.unwrap();
        assert!(store.list_hosts().await.unwrap().is_empty());
        store.close().await;
    }
}

/// The audit chain names each way its rows can be tampered with in the database: an
/// event's details edited, an event deleted, one inserted, two swapped; each undone
/// before the next, after which the chain verifies again.
async fn audit_tampering_is_named(db: &TestDb) {
    use yeet_proto::audit::{ChainBreak, verify_chain};
    let s = db.open().await;
    for i in 0..6 {
        let mut entry = ev();
        entry.action = "host.rename".into();
        entry.details = serde_json::json!({ "to": format!("web-{i}") });
        s.record_audit(&entry).await.unwrap();
    }
    let events = s.audit_chain().await.unwrap();
    assert_eq!(events.len(), 6);
    verify_chain(&events).unwrap();
    let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let sql = |q: String| {
        let raw = raw.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .execute(&raw)
                .await
                .unwrap();
        }
    };
    let verdict = || async { verify_chain(&s.audit_chain().await.unwrap()) };

    sql(format!(
        "UPDATE audit_events SET details = '{{\"to\":\"evil\"}}' WHERE id = {}",
        seq[2]
    ))
    .await;
    assert_eq!(verdict().await, Err(ChainBreak::Altered { seq: seq[2] }));
    sql(format!(
        "UPDATE audit_events SET details = '{}' WHERE id = {}",
        events[2].details, seq[2]
    ))
    .await;
    verify_chain(&s.audit_chain().await.unwrap()).unwrap();

    sql(format!(
        "UPDATE audit_events SET id = -1 WHERE id = {}",
        seq[2]
    ))
    .await;
    assert_eq!(
        verdict().await,
        Err(ChainBreak::Removed {
            seq: seq[3],
            after_seq: Some(seq[1])
        })
    );
    sql(format!(
        "UPDATE audit_events SET id = {} WHERE id = -1",
        seq[2]
    ))
    .await;
    verify_chain(&s.audit_chain().await.unwrap()).unwrap();

    // Inserted before the newest event, with a hash that links to its predecessor.
    let last = seq[5];
    sql(format!(
        "UPDATE audit_events SET id = {} WHERE id = {last}",
        last + 1
    ))
    .await;
    let mut forged = events[5].clone();
    forged.prev_hash = events[4].hash.clone();
    forged.details = serde_json::json!({ "to": "forged" });
    forged.hash = forged.computed_hash();
    sql(format!(
        "INSERT INTO audit_events (id, at_ms, actor, key_id, action, outcome, hosts, details, address, nonce, prev_hash, hash) VALUES ({last}, {}, '{}', '', '{}', '{}', '', '{}', '', '', '{}', '{}')",
        forged.at_ms, forged.actor, forged.action, forged.outcome, forged.details, forged.prev_hash, forged.hash
    ))
    .await;
    assert_eq!(verdict().await, Err(ChainBreak::Inserted { seq: last }));
    sql(format!("DELETE FROM audit_events WHERE id = {last}")).await;
    sql(format!(
        "UPDATE audit_events SET id = {last} WHERE id = {}",
        last + 1
    ))
    .await;
    verify_chain(&s.audit_chain().await.unwrap()).unwrap();

    let swap = |a: i64, b: i64| {
        [
            format!("UPDATE audit_events SET id = -1 WHERE id = {a}"),
            format!("UPDATE audit_events SET id = {a} WHERE id = {b}"),
            format!("UPDATE audit_events SET id = {b} WHERE id = -1"),
        ]
    };
    for q in swap(seq[1], seq[2]) {
        sql(q).await;
    }
    assert_eq!(
        verdict().await,
        Err(ChainBreak::Reordered {
            seq: seq[1],
            follows_seq: seq[2]
        })
    );
    for q in swap(seq[1], seq[2]) {
        sql(q).await;
    }
    verify_chain(&s.audit_chain().await.unwrap()).unwrap();
    raw.close().await;
    s.close().await;
}

/// Retention drops the oldest events, never the newest, and appends a checkpoint that
/// anchors the first kept event: the chain still verifies, and an earlier client's pin
/// on a dropped event is accepted; without the checkpoint, the same gap is a removal.
async fn audit_retention_keeps_the_chain_verifiable(db: &TestDb) {
    use yeet_proto::audit::{CHECKPOINT, check_pinned_head, verify_chain};
    let s = db.open().await;
    for at_ms in [1_000, 2_000, 3_000, 4_000] {
        let mut entry = ev();
        entry.at_ms = at_ms;
        s.record_audit(&entry).await.unwrap();
    }
    let before = s.audit_chain().await.unwrap();
    let mut checkpoint = ev();
    checkpoint.action = CHECKPOINT.into();
    // Everything is old: all but the newest go.
    assert_eq!(
        s.drop_audit_before(10_000, &checkpoint).await.unwrap(),
        Some(3)
    );
    let after = s.audit_chain().await.unwrap();
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(after[0].seq, before[3].seq);
    assert_eq!(after[1].action, CHECKPOINT);
    assert_eq!(
        after[1].details["last_dropped_hash"],
        before[2].hash.as_str()
    );
    verify_chain(&after).unwrap();
    check_pinned_head(&after, before[1].seq, &before[1].hash).unwrap();
    // Nothing older left (the newest event and the checkpoint stay).
    assert_eq!(s.drop_audit_before(3_500, &checkpoint).await.unwrap(), None);
    assert!(
        verify_chain(&after[..1]).is_err(),
        "a gap without its checkpoint verified"
    );
    s.close().await;
}

async fn users_are_unique_by_name_and_key(db: &TestDb) {
    let s = db.open().await;
    let u = s
        .insert_user("alice", "SHA256:a", "ssh-ed25519 A", Role::Admin, "", &ev())
        .await
        .unwrap();
    let (found, key) = s.user_by_key("SHA256:a").await.unwrap().unwrap();
    assert_eq!((found, key.public_key.as_str()), (u, "ssh-ed25519 A"));
    assert!(matches!(
        s.insert_user("alice", "SHA256:b", "k", Role::Viewer, "", &ev())
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.insert_user("bob", "SHA256:a", "k", Role::Viewer, "", &ev())
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A refused insert leaves no half-made user behind.
    assert_eq!(s.list_users().await.unwrap().len(), 1);
    assert_eq!(s.list_user_keys().await.unwrap().len(), 1);
    s.close().await;
}

/// The rules a change to users must keep, checked in the same exclusive transaction that
/// writes it: an unscoped admin remains, every user keeps a key.
async fn users_keep_an_unscoped_admin_and_a_key(db: &TestDb) {
    let s = db.open().await;
    s.insert_user("alice", "SHA256:a", "ssh-ed25519 A", Role::Admin, "", &ev())
        .await
        .unwrap();
    s.insert_user(
        "bob",
        "SHA256:b",
        "ssh-ed25519 B",
        Role::Admin,
        "prod",
        &ev(),
    )
    .await
    .unwrap();
    for change in [
        UserChange::Remove,
        UserChange::Role(Role::Publisher),
        UserChange::Tags("prod".into()),
    ] {
        assert_eq!(
            s.change_user("alice", &change, 6, &ev()).await.unwrap(),
            Err(UserRefusal::LastUnscopedAdmin),
            "{change:?}"
        );
    }
    assert_eq!(
        s.change_user("alice", &UserChange::RemoveKey("SHA256:a".into()), 6, &ev())
            .await
            .unwrap(),
        Err(UserRefusal::LastKey)
    );
    assert_eq!(
        s.change_user("alice", &UserChange::RemoveKey("SHA256:x".into()), 6, &ev())
            .await
            .unwrap(),
        Err(UserRefusal::NoSuchKey)
    );
    let add = UserChange::AddKey {
        key_id: "SHA256:a2".into(),
        public_key: "ssh-ed25519 A2".into(),
    };
    s.change_user("alice", &add, 6, &ev())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        s.change_user("bob", &add, 6, &ev()).await,
        Err(StoreError::Conflict(_))
    ));
    let (gone, _) = s
        .change_user("alice", &UserChange::RemoveKey("SHA256:a".into()), 6, &ev())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone, ["SHA256:a"]);
    assert!(s.user_by_key("SHA256:a").await.unwrap().is_none());
    // bob becomes unscoped: now alice may go, and her keys with her.
    s.change_user("bob", &UserChange::Tags(String::new()), 6, &ev())
        .await
        .unwrap()
        .unwrap();
    let (gone, user) = s
        .change_user("alice", &UserChange::Remove, 6, &ev())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((gone, user), (vec!["SHA256:a2".to_owned()], None));
    assert!(s.user_by_key("SHA256:a2").await.unwrap().is_none());
    assert_eq!(
        s.change_user("alice", &UserChange::Remove, 6, &ev())
            .await
            .unwrap(),
        Err(UserRefusal::NoSuchUser)
    );
    s.close().await;
}

/// Two unscoped admins demote each other at the same moment, through two stores (as two
/// replicas): one demotion wins, the other finds its target the last unscoped admin.
async fn concurrent_demotions_leave_an_unscoped_admin(db: &TestDb) {
    for round in 0..10 {
        let (a, b) = (db.open().await, db.open().await);
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        for name in [&x, &y] {
            a.insert_user(name, &format!("SHA256:{name}"), "k", Role::Admin, "", &ev())
                .await
                .unwrap();
        }
        // Earlier rounds' admins are scoped away first, so that these two are the only
        // unscoped ones.
        for u in a.list_users().await.unwrap() {
            if u.name != x && u.name != y && u.tags.is_empty() {
                a.change_user(&u.name, &UserChange::Tags("old".into()), 6, &ev())
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        let demote = UserChange::Role(Role::Viewer);
        let event = (ev(), ev());
        let (one, two) = tokio::join!(
            a.change_user(&x, &demote, 7, &event.0),
            b.change_user(&y, &demote, 7, &event.1)
        );
        let outcomes = [one.unwrap(), two.unwrap()];
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        assert!(outcomes.contains(&Err(UserRefusal::LastUnscopedAdmin)));
        a.close().await;
        b.close().await;
    }
}

async fn registrations_upsert_evict_and_reject(db: &TestDb) {
    let s = db.open().await;
    for (i, key) in ["k1", "k2", "k3"].iter().enumerate() {
        s.upsert_registration(&registration(key, &format!("CODE{i}"), 100 + i as i64))
            .await
            .unwrap();
    }
    // Refreshing keeps first_seen and replaces code and last_seen.
    let mut again = registration("k1", "NEWCODE", 500);
    again.first_seen_ms = 999;
    s.upsert_registration(&again).await.unwrap();
    let k1 = s.registration_by_key("k1").await.unwrap().unwrap();
    assert_eq!(
        (k1.first_seen_ms, k1.last_seen_ms, k1.code.as_str()),
        (100, 500, "NEWCODE")
    );
    assert_eq!(
        s.registration_by_code("NEWCODE")
            .await
            .unwrap()
            .unwrap()
            .key_id,
        "k1"
    );
    assert_eq!(s.registration_by_code("CODE0").await.unwrap(), None);
    assert_eq!(s.count_registrations().await.unwrap(), 3);
    // Eviction takes from the busiest network: a lone host on another network stays even
    // though it is the stalest of all.
    let mut lone = registration("k0", "LONE", 50);
    lone.source = "192.0.2.7".into();
    s.upsert_registration(&lone).await.unwrap();
    // Within the busy network, the stalest (k2, seen at 101) goes first.
    assert_eq!(s.evict_one_registration().await.unwrap(), 1);
    assert_eq!(s.registration_by_key("k2").await.unwrap(), None);
    assert!(s.registration_by_key("k0").await.unwrap().is_some());
    assert!(
        s.reject_registration("k0", "alice", 7, &ev())
            .await
            .unwrap()
    );
    assert!(
        s.reject_registration("k3", "alice", 7, &ev())
            .await
            .unwrap()
    );
    assert!(s.is_rejected("k3").await.unwrap());
    assert!(
        !s.reject_registration("k3", "alice", 7, &ev())
            .await
            .unwrap()
    );
    assert!(!s.is_rejected("k1").await.unwrap());
    let listed: Vec<String> = s
        .list_registrations()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key_id)
        .collect();
    assert_eq!(listed, ["k1"]);
    s.close().await;
}

async fn approval_moves_a_registration_to_a_host_once(db: &TestDb) {
    let s = db.open().await;
    s.upsert_registration(&registration("k1", "AAAA", 1))
        .await
        .unwrap();
    s.upsert_registration(&registration("k2", "BBBB", 1))
        .await
        .unwrap();
    let h = s
        .approve_registration("k1", "web-1", "alice", &Default::default(), false, &ev())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            h.name.as_str(),
            h.key_id.as_str(),
            h.approved_by.as_str(),
            h.last_seen
        ),
        ("web-1", "k1", "alice", None)
    );
    assert_eq!(s.registration_by_key("k1").await.unwrap(), None);
    assert_eq!(
        s.approve_registration("k1", "web-2", "alice", &Default::default(), false, &ev())
            .await
            .unwrap(),
        None
    );
    // A name clash rolls the whole approval back: the registration survives.
    assert!(matches!(
        s.approve_registration("k2", "web-1", "alice", &Default::default(), false, &ev())
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.registration_by_key("k2").await.unwrap().is_some());
    assert_eq!(s.host_by_key("k1").await.unwrap().unwrap().name, "web-1");
    s.close().await;
}

async fn tags_are_given_at_approval_and_changed_only_from_what_was_read(db: &TestDb) {
    let s = db.open().await;
    let mut reg = registration("k1", "AAAA", 1);
    reg.suggested_tags = "eu kiosk".into();
    s.upsert_registration(&reg).await.unwrap();
    let mut reg2 = registration("k2", "BBBB", 1);
    reg2.suggested_tags = "kiosk".into();
    s.upsert_registration(&reg2).await.unwrap();
    let given: std::collections::BTreeSet<String> = ["prod".to_owned()].into();
    let plain = s
        .approve_registration("k1", "a", "alice", &given, false, &ev())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (plain.tags.as_str(), plain.suggested_tags.as_str()),
        ("prod", "eu kiosk")
    );
    let with = s
        .approve_registration("k2", "b", "alice", &given, true, &ev())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(with.tags, "kiosk prod");
    // Compare-and-set: a change from a stale read is not applied, and says so.
    let (done, row) = s
        .replace_host_tags("a", "prod", "eu prod", 20, &ev())
        .await
        .unwrap()
        .unwrap();
    assert!(done);
    assert_eq!(row.tags, "eu prod");
    let (done, row) = s
        .replace_host_tags("a", "prod", "", 20, &ev())
        .await
        .unwrap()
        .unwrap();
    assert!(!done);
    assert_eq!(row.tags, "eu prod");
    assert!(
        s.replace_host_tags("nobody", "", "x", 20, &ev())
            .await
            .unwrap()
            .is_none()
    );
    s.close().await;
}

/// A secret granted to a tag is held by exactly the hosts carrying the tag, as tags change;
/// a direct grant outlasts the tag; `_` in a tag is a letter, not a wildcard.
async fn secrets_granted_to_a_tag_follow_the_hosts_tags(db: &TestDb) {
    let s = db.open().await;
    let (a, b, c) = (
        host(&s, "ka", "a").await,
        host(&s, "kb", "b").await,
        host(&s, "kc", "c").await,
    );
    s.replace_host_tags("a", "", "prod", 1, &ev())
        .await
        .unwrap();
    s.replace_host_tags("b", "", "prodxeu", 1, &ev())
        .await
        .unwrap();
    let change = |action: &'static str| Change {
        author: "alice",
        action,
        detail: String::new(),
        at: 2,
        audit: None,
    };
    s.insert_secret("token", b"ciphertext", &[], &change("added"))
        .await
        .unwrap();
    let holders = |s: &Store| {
        let s = s.clone();
        async move {
            let mut h: Vec<(i64, String)> = s
                .list_grants()
                .await
                .unwrap()
                .into_iter()
                .map(|g| (g.host_id, g.via_tag))
                .collect();
            h.sort();
            h
        }
    };
    assert!(
        s.set_grants("token", &[], &["prod_eu".into()], true, &change("granted"))
            .await
            .unwrap()
    );
    assert_eq!(holders(&s).await, [], "prod_eu matched prodxeu");
    s.set_grants("token", &[], &["prod".into()], true, &change("granted"))
        .await
        .unwrap();
    assert_eq!(holders(&s).await, [(a, "prod".to_owned())]);
    s.replace_host_tags("c", "", "eu prod", 3, &ev())
        .await
        .unwrap();
    s.replace_host_tags("a", "prod", "", 3, &ev())
        .await
        .unwrap();
    assert_eq!(holders(&s).await, [(c, "prod".to_owned())]);
    // A direct grant stays when the tag goes; a revoke of a host still tagged keeps it.
    s.set_grants("token", &[c], &[], true, &change("granted"))
        .await
        .unwrap();
    s.replace_host_tags("c", "eu prod", "eu", 4, &ev())
        .await
        .unwrap();
    assert_eq!(holders(&s).await, [(c, String::new())]);
    s.replace_host_tags("b", "prodxeu", "prod", 4, &ev())
        .await
        .unwrap();
    s.set_grants("token", &[b], &[], false, &change("revoked"))
        .await
        .unwrap();
    assert_eq!(
        holders(&s).await,
        [(b, "prod".to_owned()), (c, String::new())]
    );
    // Revoking the tag takes it from the hosts that held it by the tag only.
    s.set_grants("token", &[], &["prod".into()], false, &change("revoked"))
        .await
        .unwrap();
    assert_eq!(holders(&s).await, [(c, String::new())]);
    assert_eq!(s.list_tag_grants().await.unwrap().len(), 1);
    s.delete_secret("token", &change("removed")).await.unwrap();
    assert!(s.list_tag_grants().await.unwrap().is_empty());
    s.close().await;
}

async fn hosts_rename_remove_and_report(db: &TestDb) {
    let s = db.open().await;
    let a = host(&s, "ka", "a").await;
    host(&s, "kb", "b").await;
    assert!(matches!(
        s.rename_host("a", "b", &ev()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.rename_host("a", "c", &ev()).await.unwrap().unwrap().id, a);
    assert_eq!(s.rename_host("zzz", "y", &ev()).await.unwrap(), None);
    let report = HostReport {
        current_system: Some("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-sys".into()),
        booted_system: None,
        state: yeet_proto::api::AgentState::Standby,
        os: "nixos".into(),
        arch: "aarch64".into(),
        agent_version: "9".into(),
        hardware_uuid: "4C4C4544-0042".into(),
        trust_digest: "d1".into(),
        os_version: "NixOS 25.05.20250601.abcdef0 (Warbler)".into(),
        kernel: "6.12.30".into(),
        booted_at: Some(40),
        suggested_tags: "eu kiosk".into(),
        failed_units: None,
        declared_reboot: Some(yeet_proto::api::RebootPolicy::InWindow),
    };
    s.update_host_report(a, &report, 50).await.unwrap();
    let stored = s.host_by_name("c").await.unwrap().unwrap();
    assert_eq!(stored.suggested_tags, "eu kiosk");
    assert_eq!(
        stored.policy().effective_reboot(),
        RebootPolicy::InWindow,
        "the agent's declaration holds"
    );
    assert_eq!(
        (
            stored.os_version.as_str(),
            stored.kernel.as_str(),
            stored.booted_at
        ),
        (
            "NixOS 25.05.20250601.abcdef0 (Warbler)",
            "6.12.30",
            Some(40)
        )
    );
    assert_eq!(
        s.host_by_hardware_uuid("4C4C4544-0042")
            .await
            .unwrap()
            .unwrap()
            .id,
        a
    );
    assert!(s.host_by_hardware_uuid("other").await.unwrap().is_none());
    s.touch_hosts(&[(a, 70), (a, 60)]).await.unwrap();
    let c = s.host_by_name("c").await.unwrap().unwrap();
    assert_eq!(
        (c.current_system, c.last_seen, c.arch.as_str()),
        (report.current_system.clone(), Some(70), "aarch64")
    );
    // last_seen never moves backwards.
    s.touch_hosts(&[(a, 65)]).await.unwrap();
    assert_eq!(
        s.host_by_name("c").await.unwrap().unwrap().last_seen,
        Some(70)
    );
    assert_eq!(s.delete_host("c", &ev()).await.unwrap().unwrap().id, a);
    assert_eq!(s.delete_host("c", &ev()).await.unwrap(), None);
    let names: Vec<String> = s
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["b"]);
    s.close().await;
}

async fn releases_and_desired_state(db: &TestDb) {
    let s = db.open().await;
    let a = host(&s, "ka", "a").await;
    let b = host(&s, "kb", "b").await;
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-sys{n}");
    let release = |message: &str, revision: Option<&str>, dirty| NewRelease {
        author: "ci".into(),
        message: message.into(),
        revision: revision.map(Into::into),
        dirty,
        rollback: false,
        rollout: None,
    };
    let r1 = s
        .insert_release(
            &release("first", Some("8c95a2f"), false),
            100,
            &[(a, "a".into(), p(1)), (b, "b".into(), p(1))],
            &ev(),
        )
        .await
        .unwrap();
    let r2 = s
        .insert_release(
            &release("only a", None, true),
            200,
            &[(a, "a".into(), p(2))],
            &ev(),
        )
        .await
        .unwrap();
    assert!(r2 > r1);
    let mut desired = s.desired_systems().await.unwrap();
    desired.sort_by_key(|d| d.host_id);
    let got: Vec<(i64, i64, String)> = desired
        .into_iter()
        .map(|d| (d.host_id, d.release_id, d.store_path))
        .collect();
    assert_eq!(got, [(a, r2, p(2)), (b, r1, p(1))]);
    let all = s.list_releases(None, 10).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [r2, r1]);
    assert_eq!(
        all[1].entries,
        [("a".to_string(), p(1)), ("b".to_string(), p(1))]
    );
    assert_eq!(all[1].host_ids, [a, b]);
    assert_eq!(
        (
            all[1].message.as_str(),
            all[1].revision.as_deref(),
            all[1].dirty
        ),
        ("first", Some("8c95a2f"), false)
    );
    assert_eq!((all[0].revision.as_deref(), all[0].dirty), (None, true));
    assert_eq!(s.release_by_id(r1).await.unwrap().unwrap(), all[1]);
    assert_eq!(s.release_by_id(r2 + 100).await.unwrap(), None);
    let for_b = s.list_releases(Some(&[b]), 10).await.unwrap();
    assert_eq!(for_b.iter().map(|r| r.id).collect::<Vec<_>>(), [r1]);
    assert_eq!(s.list_releases(None, 1).await.unwrap().len(), 1);
    // Releases outlive the hosts they name.
    s.delete_host("b", &ev()).await.unwrap();
    assert_eq!(s.list_releases(None, 10).await.unwrap().len(), 2);
    s.close().await;
}

/// A stored enum the code does not know (a corrupt row, a downgrade) is an error naming the
/// value, never a silent default such as `standby`.
async fn corrupt_enum_columns_are_errors(db: &TestDb) {
    let s = db.open().await;
    host(&s, "k1", "a").await;
    s.insert_user("alice", "SHA256:a", "ssh-ed25519 A", Role::Admin, "", &ev())
        .await
        .unwrap();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    for (table, column) in [
        ("hosts", "state"),
        ("hosts", "last_result"),
        ("users", "role"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {column} = 'bogus'"
        )))
        .execute(&raw)
        .await
        .unwrap();
        let read = if table == "hosts" {
            s.list_hosts().await.map(drop)
        } else {
            s.list_users().await.map(drop)
        };
        let err = read
            .expect_err("a corrupt row must not read as a default")
            .to_string();
        assert!(err.contains("bogus"), "{table}.{column}: {err}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {column} = {}",
            if column == "last_result" {
                "NULL"
            } else if column == "role" {
                "'admin'"
            } else {
                "'standby'"
            }
        )))
        .execute(&raw)
        .await
        .unwrap();
    }
    raw.close().await;
    s.close().await;
}

async fn one_open_detachment_per_host(db: &TestDb) {
    let s = db.open().await;
    let a = host(&s, "ka", "a").await;
    assert_eq!(s.host_by_id(a).await.unwrap().unwrap().allow_detach, 0);
    let detach = HostPolicyChange {
        allow_detach: Some(true),
        ..Default::default()
    };
    assert!(s.set_host_policy(a, &detach, &ev()).await.unwrap());
    assert_eq!(s.host_by_id(a).await.unwrap().unwrap().allow_detach, 1);
    assert!(!s.set_host_policy(9999, &detach, &ev()).await.unwrap());
    // A change of one field keeps the other.
    let reboot = HostPolicyChange {
        reboot: Some(RebootPolicy::InWindow),
        ..Default::default()
    };
    assert!(s.set_host_policy(a, &reboot, &ev()).await.unwrap());
    let policy = s.host_by_id(a).await.unwrap().unwrap().policy();
    assert_eq!(
        (policy.allow_detach, policy.reboot, policy.declared_reboot),
        (true, RebootPolicy::InWindow, None)
    );
    let first = DetachmentRow {
        host_id: a,
        since: 100,
        requested_by: "alice (uid 1000)".into(),
        reason: "testing a kernel".into(),
    };
    assert_eq!(s.start_detachment(&first, &ev()).await.unwrap(), first);
    // A second request while one is open gets the open one (the unique index decides).
    let again = DetachmentRow {
        since: 200,
        reason: "again".into(),
        ..first.clone()
    };
    assert_eq!(s.start_detachment(&again, &ev()).await.unwrap(), first);
    assert_eq!(
        s.open_detachments().await.unwrap(),
        std::slice::from_ref(&first)
    );
    assert!(
        s.end_detachment(a, 300, "operator alice", &ev())
            .await
            .unwrap()
    );
    assert!(!s.end_detachment(a, 301, "host", &ev()).await.unwrap());
    assert!(s.open_detachments().await.unwrap().is_empty());
    // Ended ones stay as history; a new one may open.
    assert_eq!(s.start_detachment(&again, &ev()).await.unwrap(), again);
    let history = s.list_detachments().await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].ended_at, history[0].ended_by.as_deref()),
        (Some(300), Some("operator alice"))
    );
    assert_eq!(history[1].ended_at, None);
    // They go with the host.
    s.delete_host("a", &ev()).await.unwrap();
    assert!(s.list_detachments().await.unwrap().is_empty());
    s.close().await;
}

async fn nonces_are_accepted_once_until_their_signed_time_expires(db: &TestDb) {
    let s = db.open().await;
    let row =
        |key: &str, nonce: &str, signed_at: i64| (key.to_owned(), nonce.to_owned(), signed_at);
    let fresh = |rows: &[(&str, &str)]| -> std::collections::HashSet<(String, String)> {
        rows.iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect()
    };
    // The same nonce under two keys is two requests.
    let first = [
        row("k1", "n1", 100),
        row("k1", "n2", 100),
        row("k2", "n1", 100),
    ];
    assert_eq!(
        s.record_nonces(&first).await.unwrap(),
        fresh(&[("k1", "n1"), ("k1", "n2"), ("k2", "n1")])
    );
    // A replay carries its signed time; only the new nonce is fresh.
    let replayed = [row("k1", "n1", 100), row("k1", "n3", 101)];
    assert_eq!(
        s.record_nonces(&replayed).await.unwrap(),
        fresh(&[("k1", "n3")])
    );
    // Until a replica has announced its clock skew, nothing expires.
    assert_eq!(s.delete_expired_nonces(1_000).await.unwrap(), 0);
    // Expiry takes what was signed more than the longest announced skew ago; a replica
    // with a shorter skew does not shorten it.
    s.announce_clock_skew(10).await.unwrap();
    s.announce_clock_skew(5).await.unwrap();
    assert_eq!(s.delete_expired_nonces(110).await.unwrap(), 0);
    assert_eq!(s.delete_expired_nonces(111).await.unwrap(), 3);
    assert!(
        s.record_nonces(&[row("k1", "n3", 101)])
            .await
            .unwrap()
            .is_empty()
    );
    // A horizon that is not a number stops expiry with an error that says what to do,
    // rather than being read as zero and forgetting every nonce.
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE settings SET value = 'soon' WHERE name = 'nonce_horizon_secs'")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let corrupt = s
        .delete_expired_nonces(1_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(corrupt.contains("nonce_horizon_secs") && corrupt.contains("delete that row"));
    let at_start = s.announce_clock_skew(300).await.unwrap_err().to_string();
    assert_eq!(at_start, corrupt);
    assert!(
        s.record_nonces(&[row("k1", "n3", 101)])
            .await
            .unwrap()
            .is_empty()
    );
    s.close().await;
}

/// An activation report as the store records it.
fn activation(
    host_id: i64,
    host_name: &str,
    path: &str,
    result: ActivationResult,
) -> ActivationRow {
    ActivationRow {
        id: 0,
        host_id,
        host_name: host_name.into(),
        store_path: path.into(),
        release_id: None,
        result: Wire(result),
        reason: String::new(),
        started_at: 1,
        finished_at: 2,
        reboot_required: 0,
    }
}

async fn last_attempts_are_read_for_many_hosts_at_once(db: &TestDb) {
    let s = db.open().await;
    let (a, b, never) = (
        host(&s, "ka", "a").await,
        host(&s, "kb", "b").await,
        host(&s, "kc", "c").await,
    );
    let attempt = activation;
    for row in [
        attempt(a, "a", "/nix/store/p1", ActivationResult::Confirmed),
        attempt(a, "a", "/nix/store/p2", ActivationResult::RolledBack),
        attempt(b, "b", "/nix/store/p1", ActivationResult::Confirmed),
    ] {
        s.record_activation(&row, b"").await.unwrap();
    }
    // The newest attempt of each; hosts that never tried one, or do not exist, are absent.
    let mut read = s.last_result_paths(&[a, b, 9999, never]).await.unwrap();
    read.sort();
    assert_eq!(
        read,
        vec![(a, "/nix/store/p2".into()), (b, "/nix/store/p1".into())]
    );
    assert!(s.last_result_paths(&[]).await.unwrap().is_empty());
    s.close().await;
}

/// Enrolls an osquery node named `name`; its id.
async fn node(s: &Store, name: &str) -> i64 {
    let e = NodeEnrollment {
        host_identifier: name.into(),
        node_key_hash: format!("hash-of-{name}"),
        hostname: name.into(),
        hardware_uuid: String::new(),
        platform: "linux".into(),
        os_name: String::new(),
        osquery_version: String::new(),
        at: 1,
    };
    match s.enroll_node(&e, 600).await.unwrap() {
        Enrolled::New(row) => row.id,
        other => panic!("{name} was not new: {other:?}"),
    }
}

async fn log_listings_stop_at_their_byte_budget(db: &TestDb) {
    let s = db.open().await;
    let (one, two) = (node(&s, "one").await, node(&s, "two").await);
    let line = |node_id: i64, size: usize| NewLogLine {
        node_id,
        kind: "result",
        name: "q".into(),
        logged_at: 1,
        line: format!("\"{}\"", "x".repeat(size - 2)),
    };
    // Three lines of 100 bytes, one of 1,000, two of 100, from two nodes.
    let lines = [
        line(one, 100),
        line(one, 100),
        line(two, 100),
        line(one, 1000),
        line(one, 100),
        line(one, 100),
    ];
    assert_eq!(s.insert_log_lines(&lines, 10, 1 << 20).await.unwrap(), None);
    let all = LogQuery {
        limit: 100,
        ..Default::default()
    };
    let ids = |rows: &[yeet_server::store::LogRow]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    let (rows, more) = s.list_log_lines(&all, 10_000).await.unwrap();
    assert_eq!((rows.len(), more), (6, false));
    let every = ids(&rows);
    // A budget of 350 bytes holds the first three; the big fourth waits for the next page.
    let (rows, more) = s.list_log_lines(&all, 350).await.unwrap();
    assert_eq!((ids(&rows), more), (every[..3].to_vec(), true));
    assert_eq!(rows[0].line.len(), 100);
    // A line larger than the budget comes alone, so that a listing always moves on.
    let next = LogQuery {
        after_id: Some(every[2]),
        ..all.clone()
    };
    let (rows, more) = s.list_log_lines(&next, 350).await.unwrap();
    assert_eq!((ids(&rows), more), (vec![every[3]], true));
    // The count limit says "more" too, and filters still apply.
    let (rows, more) = s
        .list_log_lines(
            &LogQuery {
                limit: 2,
                node_ids: Some(vec![one]),
                ..Default::default()
            },
            10_000,
        )
        .await
        .unwrap();
    assert_eq!((ids(&rows), more), (vec![every[0], every[1]], true));
    s.close().await;
}

async fn rollbacks_walk_back_through_confirmed_systems(db: &TestDb) {
    let s = db.open().await;
    let a = host(&s, "ka", "a").await;
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-sys{n}");
    let release = |path: String, rollback: bool| {
        let s = &s;
        async move {
            let r = NewRelease {
                author: "ci".into(),
                message: "m".into(),
                rollback,
                ..Default::default()
            };
            s.insert_release(&r, 1, &[(a, "a".into(), path)], &ev())
                .await
                .unwrap()
        }
    };
    let confirm = |path: String| {
        let s = &s;
        async move {
            let row = activation(a, "a", &path, ActivationResult::Confirmed);
            s.record_activation(&row, b"").await.unwrap();
        }
    };
    let r1 = release(p(1), false).await;
    confirm(p(1)).await;
    release(p(2), false).await;
    confirm(p(2)).await;
    let r3 = release(p(3), false).await; // never confirmed
    let r4 = release(p(4), false).await;
    confirm(p(4)).await;
    assert_eq!(s.rollback_target(a, r4).await.unwrap(), Some(p(2)));
    assert_eq!(s.rollback_target(a, r3).await.unwrap(), Some(p(2)));
    assert_eq!(s.rollback_target(a, r1).await.unwrap(), None);
    // A rollback release to p(2) is not new: rolling back from it goes further.
    let back = release(p(2), true).await;
    assert_eq!(s.rollback_target(a, back).await.unwrap(), Some(p(1)));
    // A release that does not name the host has nothing to roll back.
    assert_eq!(s.rollback_target(a + 100, r4).await.unwrap(), None);
    s.close().await;
}

async fn attempts_are_forgotten_for_a_retry_or_a_trust_change(db: &TestDb) {
    let s = db.open().await;
    let hosts = [
        host(&s, "ka", "a").await,
        host(&s, "kb", "b").await,
        host(&s, "kc", "c").await,
    ];
    let attempt = |host_id: i64, result: ActivationResult| {
        let path = format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-sys{host_id}");
        activation(host_id, "x", &path, result)
    };
    let results = [
        ActivationResult::Failed,
        ActivationResult::Untrusted,
        ActivationResult::RolledBack,
    ];
    let record_all = || async {
        for (id, result) in hosts.iter().zip(results) {
            s.record_activation(&attempt(*id, result), b"")
                .await
                .unwrap();
        }
    };
    let attempted = || async {
        let mut ids: Vec<i64> = s
            .last_result_paths(&hosts)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    };
    record_all().await;
    // Only failed attempts, as a grant does.
    let forgotten = s
        .forget_attempts(&hosts, Some(&[ActivationResult::Failed]), None)
        .await
        .unwrap();
    assert_eq!(forgotten, [hosts[0]]);
    assert_eq!(attempted().await, [hosts[1], hosts[2]]);
    // Every named host, as `yeet retry` does; those with nothing to forget are not named.
    let mut forgotten = s.forget_attempts(&hosts, None, Some(&ev())).await.unwrap();
    forgotten.sort();
    assert_eq!(forgotten, [hosts[1], hosts[2]]);
    assert!(attempted().await.is_empty());
    assert!(s.forget_attempts(&[], None, None).await.unwrap().is_empty());
    // A changed trust digest forgets an untrusted attempt only; the same digest again
    // forgets nothing.
    let report = HostReport {
        current_system: None,
        booted_system: None,
        state: yeet_proto::api::AgentState::Standby,
        os: String::new(),
        arch: String::new(),
        agent_version: String::new(),
        trust_digest: "new-keys".into(),
        ..Default::default()
    };
    for (round, expected) in [(60, vec![hosts[0], hosts[2]]), (70, hosts.to_vec())] {
        record_all().await;
        for id in hosts {
            s.update_host_report(id, &report, round).await.unwrap();
        }
        assert_eq!(attempted().await, expected, "round {round}");
    }
    s.close().await;
}

/// A node's stored log bytes are kept with every insert and expiry, and a batch that would
/// take it past its budget stores nothing and is counted.
async fn a_nodes_stored_logs_stay_within_its_budget(db: &TestDb) {
    let s = db.open().await;
    let (busy, quiet) = (node(&s, "busy").await, node(&s, "quiet").await);
    let line = |node_id: i64| NewLogLine {
        node_id,
        kind: "result",
        name: "q".into(),
        logged_at: 1,
        line: format!("\"{}\"", "x".repeat(398)),
    };
    let stored = |name: &'static str| {
        let s = &s;
        async move {
            let nodes = s.list_nodes().await.unwrap();
            let n = nodes.iter().find(|n| n.host_identifier == name).unwrap();
            (n.log_bytes, n.log_refusals)
        }
    };
    for at in [10, 20] {
        assert_eq!(
            s.insert_log_lines(&[line(busy), line(busy)], at, 1600)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(stored("busy").await, (1600, 0));
    // One more byte than the budget: refused, nothing stored, counted; other nodes go on.
    assert_eq!(
        s.insert_log_lines(&[line(busy)], 30, 1600).await.unwrap(),
        Some(busy)
    );
    assert_eq!(stored("busy").await, (1600, 1));
    assert_eq!(
        s.insert_log_lines(&[line(quiet)], 30, 1600).await.unwrap(),
        None
    );
    // Expiry gives the budget back.
    assert_eq!(s.delete_log_lines_before(15).await.unwrap(), 2);
    assert_eq!(stored("busy").await, (800, 1));
    assert_eq!(stored("quiet").await, (400, 0));
    assert_eq!(
        s.insert_log_lines(&[line(busy)], 40, 1600).await.unwrap(),
        None
    );
    s.close().await;
}

on_both_backends!(
    a_nodes_stored_logs_stay_within_its_budget,
    attempts_are_forgotten_for_a_retry_or_a_trust_change,
    rollbacks_walk_back_through_confirmed_systems,
    log_listings_stop_at_their_byte_budget,
    last_attempts_are_read_for_many_hosts_at_once,
    nonces_are_accepted_once_until_their_signed_time_expires,
    one_open_detachment_per_host,
    corrupt_enum_columns_are_errors,
    migrations_are_idempotent,
    audit_tampering_is_named,
    audit_retention_keeps_the_chain_verifiable,
    stores_opened_at_once_on_a_fresh_database_migrate_once,
    users_are_unique_by_name_and_key,
    registrations_upsert_evict_and_reject,
    approval_moves_a_registration_to_a_host_once,
    users_keep_an_unscoped_admin_and_a_key,
    concurrent_demotions_leave_an_unscoped_admin,
    tags_are_given_at_approval_and_changed_only_from_what_was_read,
    secrets_granted_to_a_tag_follow_the_hosts_tags,
    hosts_rename_remove_and_report,
    releases_and_desired_state,
);

/// The two migration sets are one schema: the PostgreSQL set is the SQLite set with these
/// type substitutions and nothing else (comments aside). A migration added to one set only,
/// or a column that differs, fails here before it can fail on a replica.
#[test]
fn migration_sets_differ_only_in_known_type_substitutions() {
    const SUBSTITUTIONS: &[(&str, &str)] = &[
        (
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        ),
        ("BLOB", "BYTEA"),
        // A table stored as its primary key's index; PostgreSQL has no such option.
        (") WITHOUT ROWID;", ");"),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let names = |backend: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(backend))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let without_comments = |text: String| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(names("sqlite"), names("postgres"));
    assert!(names("sqlite").len() >= 5);
    for name in names("sqlite") {
        let read = |backend: &str| std::fs::read_to_string(dir.join(backend).join(&name)).unwrap();
        let mut expected = without_comments(read("sqlite"));
        for (sqlite, postgres) in SUBSTITUTIONS {
            expected = expected.replace(sqlite, postgres);
        }
        assert_eq!(expected, without_comments(read("postgres")), "{name}");
    }
}

/// SQLite keeps the nonce log in a file of its own next to the database (so that a held
/// write lock on the database never stops a request's authentication): the log outlives a
/// restart, and a corrupt log stops the server with an error that names the file and says
/// what to do, instead of an unexplained "file is not a database".
#[tokio::test]
async fn the_sqlite_nonce_log_is_its_own_file_and_a_corrupt_one_is_explained() {
    let db = TestDb::sqlite().await;
    let row = ("k1".to_owned(), "n1".to_owned(), 100);
    let s = db.open().await;
    assert_eq!(
        s.record_nonces(std::slice::from_ref(&row))
            .await
            .unwrap()
            .len(),
        1
    );
    s.close().await;
    let log = db.dir().join("yeet.db.nonces");
    assert!(log.is_file(), "no nonce log at {}", log.display());
    // After a restart the nonce is still known: a replay is refused.
    let s = db.open().await;
    assert!(
        s.record_nonces(std::slice::from_ref(&row))
            .await
            .unwrap()
            .is_empty()
    );
    s.close().await;
    for sidecar in ["yeet.db.nonces-wal", "yeet.db.nonces-shm"] {
        let _ = std::fs::remove_file(db.dir().join(sidecar));
    }
    std::fs::write(&log, vec![b'x'; 8192]).unwrap();
    let err = Store::open(&db.url, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NonceLog { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&log.display().to_string())
            && text.contains("not a database")
            && text.contains("move it aside"),
        "{text}"
    );
    // Moved aside, as the error says: the server opens again with an empty log.
    std::fs::rename(&log, db.dir().join("yeet.db.nonces.corrupt")).unwrap();
    let s = db.open().await;
    assert_eq!(s.record_nonces(&[row]).await.unwrap().len(), 1);
    s.close().await;
}

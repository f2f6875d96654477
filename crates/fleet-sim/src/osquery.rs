//! An osqueryd emulator: no osquery binary can be installed on the test machines, so this
//! client speaks to a server the way osqueryd's TLS plugins do on the wire, following
//! osquery's sources:
//! - enrollment: `plugins/remote/enroll/tls_enroll.cpp` (`enroll_secret`, `host_identifier`,
//!   `platform_type` as a decimal string, `host_details`; the key from `node_key` or `id`);
//! - every later request: `osquery/remote/utility.h` (`TLSRequestHelper::go`: adds
//!   `node_key`; the status code is ignored and the body read; `node_invalid: true` clears
//!   the node key, so the next request enrolls again; an `error` member is a failure);
//! - logs: `plugins/logger/tls_logger.cpp` (batches of `log_type` + `data`, gzip with
//!   `Content-Encoding: gzip` under `--logger_tls_compress`, kept buffered on failure);
//! - distributed: `plugins/distributed/tls_distributed.cpp` and
//!   `osquery/distributed/distributed.cpp` (`queries`, `statuses`, `messages`);
//! - carving: `osquery/carver/carver.cpp` (`Carver::postCarve`: start, then each block once,
//!   never retried, with no node key).
//!
//! `old_format` makes it send numbers as strings, as boost-property_tree clients did.

use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

use osquery_tls::paths;

pub struct Osqueryd {
    base: String,
    agent: ureq::Agent,
    pub host_identifier: String,
    pub hostname: String,
    pub enroll_secret: String,
    pub node_key: Option<String>,
    /// Send numbers as strings (osquery before 4.x).
    pub old_format: bool,
    /// `--logger_tls_compress`.
    pub compress: bool,
    /// Result lines not yet accepted by the server.
    pub buffered: Vec<Value>,
    /// How many times it enrolled.
    pub enrollments: u32,
}

/// A number as this client version writes it.
fn num(old_format: bool, n: u64) -> Value {
    if old_format {
        json!(n.to_string())
    } else {
        json!(n)
    }
}

impl Osqueryd {
    pub fn new(base_url: &str, host_identifier: &str, enroll_secret: &str) -> Osqueryd {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Osqueryd {
            base: base_url.trim_end_matches('/').to_owned(),
            agent,
            host_identifier: host_identifier.to_owned(),
            hostname: host_identifier.to_owned(),
            enroll_secret: enroll_secret.to_owned(),
            node_key: None,
            old_format: false,
            compress: false,
            buffered: Vec::new(),
            enrollments: 0,
        }
    }

    /// Posts raw bytes; returns the status and the body as JSON (or as a string).
    pub fn post_raw(&self, path: &str, body: &[u8], gzip: bool) -> (u16, Value) {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        let mut resp = req
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Posts JSON, gzip-compressed when asked.
    pub fn post_json(&self, path: &str, body: &Value, gzip: bool) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let bytes = if gzip { gzip_bytes(&bytes) } else { bytes };
        self.post_raw(path, &bytes, gzip)
    }

    /// The enroll request of `tls_enroll.cpp`.
    pub fn enroll_body(&self) -> Value {
        json!({
            "enroll_secret": self.enroll_secret,
            "host_identifier": self.host_identifier,
            "platform_type": "9",
            "host_details": {
                "os_version": {"name": "NixOS", "version": "24.11 (Vicuna)", "major": "24", "minor": "11"},
                "osquery_info": {"version": if self.old_format { "3.3.2" } else { "5.12.1" }, "uuid": "emulated"},
                "system_info": {"hostname": self.hostname, "uuid": "4C4C4544-0000-0000-0000-000000000000", "cpu_brand": "emulated"},
                "platform_info": {"vendor": "SeaBIOS"}
            }
        })
    }

    /// Enrolls; the error is the server's answer when it gave no node key.
    pub fn enroll(&mut self) -> Result<(), Value> {
        let (_, answer) = self.post_json(paths::ENROLL, &self.enroll_body(), false);
        let key = answer
            .get("node_key")
            .or_else(|| answer.get("id"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty());
        match key {
            Some(key) => {
                self.node_key = Some(key.to_owned());
                self.enrollments += 1;
                Ok(())
            }
            None => Err(answer),
        }
    }

    /// `TLSRequestHelper::go`: enrolls first when it has no key, adds `node_key`, and reads
    /// the answer as osqueryd does.
    pub fn call(&mut self, path: &str, mut params: Value, gzip: bool) -> Result<Value, Value> {
        if self.node_key.is_none() {
            self.enroll()?;
        }
        params["node_key"] = json!(self.node_key.clone().unwrap_or_default());
        let (_, answer) = self.post_json(path, &params, gzip);
        if !answer.is_object() {
            return Err(answer);
        }
        if osquery_tls::asks_reenrollment(&answer) {
            self.node_key = None;
            return Err(answer);
        }
        if answer.get("error").is_some() {
            return Err(answer);
        }
        Ok(answer)
    }

    pub fn config(&mut self) -> Result<osquery_tls::config::Config, Value> {
        let answer = self.call(paths::CONFIG, json!({}), false)?;
        serde_json::from_value(answer.clone()).map_err(|_| answer)
    }

    /// A result line in event format, as this client version writes it.
    pub fn result_line(&self, name: &str, action: &str, columns: Value) -> Value {
        let old = self.old_format;
        json!({
            "name": name, "hostIdentifier": self.host_identifier,
            "calendarTime": "Mon Nov 23 20:00:00 2026 UTC", "unixTime": num(old, 1_795_464_000),
            "epoch": num(old, 0), "counter": num(old, 1), "numerics": if old { json!("false") } else { json!(false) },
            "decorations": {"host_uuid": "emulated"}, "columns": columns, "action": action
        })
    }

    /// A status (glog) line.
    pub fn status_line(&self, severity: u64, message: &str) -> Value {
        let old = self.old_format;
        json!({
            "hostIdentifier": self.host_identifier, "calendarTime": "Mon Nov 23 20:00:00 2026 UTC",
            "unixTime": num(old, 1_795_464_000), "severity": num(old, severity),
            "filename": "scheduler.cpp", "line": num(old, 83), "message": message, "version": "5.12.1"
        })
    }

    /// Buffers result lines and sends the buffer; lines stay buffered if the post fails.
    pub fn log_results(&mut self, lines: Vec<Value>) -> Result<(), Value> {
        self.buffered.extend(lines);
        let batch = json!({"log_type": "result", "data": self.buffered});
        let compress = self.compress;
        self.call(paths::LOG, batch, compress)?;
        self.buffered.clear();
        Ok(())
    }

    pub fn log_status(&mut self, lines: Vec<Value>) -> Result<(), Value> {
        let compress = self.compress;
        self.call(
            paths::LOG,
            json!({"log_type": "status", "data": lines}),
            compress,
        )
        .map(drop)
    }

    pub fn distributed_read(&mut self) -> Result<osquery_tls::distributed::ReadResponse, Value> {
        let answer = self.call(paths::DISTRIBUTED_READ, json!({}), false)?;
        serde_json::from_value(answer.clone()).map_err(|_| answer)
    }

    /// Reads, answers each query with `run` (rows, or an error message), and writes the
    /// results: statuses 0 or 1, messages for failures. Returns the query ids it ran.
    pub fn run_distributed(
        &mut self,
        run: impl Fn(&str) -> Result<Vec<Value>, String>,
    ) -> Result<Vec<String>, Value> {
        let read = self.distributed_read()?;
        if read.queries.is_empty() {
            return Ok(Vec::new());
        }
        let (mut queries, mut statuses, mut messages) = (json!({}), json!({}), json!({}));
        for (id, sql) in &read.queries {
            match run(sql) {
                Ok(rows) => {
                    queries[id] = json!(rows);
                    statuses[id] = num(self.old_format, 0);
                }
                Err(message) => {
                    queries[id] = json!("");
                    statuses[id] = num(self.old_format, 1);
                    messages[id] = json!(message);
                }
            }
        }
        self.call(
            paths::DISTRIBUTED_WRITE,
            json!({"queries": queries, "statuses": statuses, "messages": messages}),
            false,
        )?;
        Ok(read.queries.keys().cloned().collect())
    }

    /// The start request of a carve of `data` in blocks of `block_size`.
    pub fn carve_init_body(&self, request_id: &str, size: u64, block_size: u64) -> Value {
        let old = self.old_format;
        json!({
            "block_count": num(old, size.div_ceil(block_size)), "block_size": num(old, block_size),
            "carve_size": num(old, size), "carve_id": "5d9c7a1e-emulated", "request_id": request_id,
            "node_key": self.node_key.clone().unwrap_or_default()
        })
    }

    /// A block request as `Carver::postCarve` sends it (no node key).
    pub fn carve_block_body(
        &self,
        session_id: &str,
        request_id: &str,
        id: u64,
        data: &[u8],
    ) -> Value {
        use base64::Engine;
        json!({
            "block_id": num(self.old_format, id), "session_id": session_id, "request_id": request_id,
            "data": base64::engine::general_purpose::STANDARD.encode(data)
        })
    }

    /// Carves `data` as osqueryd uploads an archive: start, then each block once, in the
    /// order given by `order` (block ids), failures ignored. Returns the session id and the
    /// block answers.
    pub fn carve(
        &mut self,
        request_id: &str,
        data: &[u8],
        block_size: usize,
        order: &[u64],
    ) -> Result<(String, Vec<(u16, Value)>), Value> {
        let body = self.carve_init_body(request_id, data.len() as u64, block_size as u64);
        let (_, answer) = self.post_json(paths::CARVE_INIT, &body, false);
        let session = answer
            .get("session_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| answer.clone())?
            .to_owned();
        let blocks: Vec<&[u8]> = data.chunks(block_size).collect();
        let answers = order
            .iter()
            .map(|id| {
                let block = blocks.get(*id as usize).copied().unwrap_or_default();
                let body = self.carve_block_body(&session, request_id, *id, block);
                self.post_json(paths::CARVE_BLOCK, &body, false)
            })
            .collect();
        Ok((session, answers))
    }
}

pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

//! The set-up phase: find the target's shards (`GET /v1/cluster`), then sign up, fund and log in
//! the benchmark users, spread evenly over the shards.
//!
//! Runs before the measured run, with blocking connections on a few threads; any failure stops
//! the benchmark with the server's answer, since figures over a half-built user set would lie.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::{BlockingClient, Reply};
use crate::scenario::User;
use crate::tls::TlsClient;

/// Slots of the cluster's hash space (the API contract's `slots`).
pub const SLOT_COUNT: u16 = 16384;
/// Attempts of one set-up request answered 429 or 503 (overloaded or throttled) before giving up.
const SETUP_ATTEMPTS_MAX: u32 = 50;
/// Wait between such attempts.
const SETUP_RETRY_WAIT: Duration = Duration::from_millis(200);

/// A set-up step that failed.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// One shard's slot range and port, from `/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShardRange {
    /// Shard index.
    pub shard: usize,
    /// First slot owned.
    pub first_slot: u16,
    /// Last slot owned (inclusive).
    pub last_slot: u16,
    /// The shard-aware port.
    pub port: u16,
}

/// What the tool knows of the server.
#[derive(Debug, Clone)]
pub struct Target {
    /// The public address.
    pub address: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Shards (1 when the server has no `/v1/cluster`).
    pub shards: usize,
    /// Slot ranges, empty when the server has no `/v1/cluster`.
    pub ranges: Vec<ShardRange>,
    /// https: the TLS client for the public port and the shard ports.
    pub tls: Option<TlsClient>,
}

impl Target {
    /// The home shard of `slot`: `None` for a slot another node serves (the target is one node
    /// of several, and its ranges cover only its own slots). Without a cluster map, shard 0.
    pub fn shard_of_slot(&self, slot: u16) -> Option<usize> {
        if self.ranges.is_empty() {
            return Some(0);
        }
        self.ranges
            .iter()
            .find(|range| (range.first_slot..=range.last_slot).contains(&slot))
            .map(|range| range.shard)
    }

    /// The address of `shard`'s shard-aware port.
    pub fn shard_address(&self, shard: usize) -> Option<SocketAddr> {
        let range = self.ranges.iter().find(|range| range.shard == shard)?;
        Some(SocketAddr::new(self.address.ip(), range.port))
    }
}

#[derive(Deserialize)]
struct ClusterMap {
    shards: usize,
    slots: u32,
    ranges: Vec<ShardRange>,
}

/// Reads the cluster map; a server without `/v1/cluster` (404) is one shard. Unless `strict`
/// (the run needs the map: users or shard-aware connections), a server that answers the path
/// with something else (a bare benchmark loop answers every path alike) is one shard too.
pub fn discover(
    address: SocketAddr,
    host: &str,
    tls: Option<TlsClient>,
    strict: bool,
) -> Result<Target, SetupError> {
    let mut client = BlockingClient::new(address, host, tls.clone());
    let reply = client
        .request("GET", "/v1/cluster", &[], None)
        .map_err(|error| SetupError(format!("GET /v1/cluster on {address}: {error}")))?;
    let mut target = Target {
        address,
        host: host.to_string(),
        shards: 1,
        ranges: Vec::new(),
        tls,
    };
    match reply.status {
        200 if !strict && serde_json::from_slice::<ClusterMap>(&reply.body).is_err() => {}
        200 => {
            let map: ClusterMap = serde_json::from_slice(&reply.body).map_err(|error| {
                SetupError(format!(
                    "GET /v1/cluster: unexpected answer ({error}): {}",
                    reply.body_text()
                ))
            })?;
            validate_map(&map)?;
            target.shards = map.shards;
            target.ranges = map.ranges;
        }
        404 => {}
        _ if !strict => {}
        status => {
            return Err(SetupError(format!(
                "GET /v1/cluster answered {status}: {}",
                reply.body_text()
            )))
        }
    }
    Ok(target)
}

fn validate_map(map: &ClusterMap) -> Result<(), SetupError> {
    let bad = |why: &str| Err(SetupError(format!("GET /v1/cluster: {why}")));
    if map.slots != u32::from(SLOT_COUNT) {
        return bad(&format!("{} slots, this tool knows {SLOT_COUNT}", map.slots));
    }
    if map.shards == 0 || map.ranges.len() != map.shards {
        return bad("the ranges do not list every shard once");
    }
    // One node's shards tile its range of slots: all of them, or (a node of several) a
    // contiguous part.
    let mut ranges = map.ranges.clone();
    ranges.sort_by_key(|range| range.first_slot);
    let mut next = u32::from(ranges[0].first_slot);
    for range in &ranges {
        if u32::from(range.first_slot) != next || range.last_slot < range.first_slot {
            return bad("the ranges do not tile the slots");
        }
        next = u32::from(range.last_slot) + 1;
    }
    if next > u32::from(SLOT_COUNT) {
        return bad("the ranges go past the last slot");
    }
    Ok(())
}

/// The slot of a username, as the server computes it: CRC-16/XMODEM of the lower-cased name,
/// mod 16384.
pub fn slot_of_username(username: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in username.to_ascii_lowercase().bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOT_COUNT
}

/// The slot a `usr_` id encodes in its first four hex digits, if it has that form.
pub fn slot_of_user_id(id: &str) -> Option<u16> {
    let hex = id.strip_prefix("usr_")?.get(..4)?;
    u16::from_str_radix(hex, 16)
        .ok()
        .filter(|slot| *slot < SLOT_COUNT)
}

/// How to create the users.
#[derive(Debug, Clone)]
pub struct UserPlan {
    /// Users to create (at least this many; each shard gets at least `per_shard_min`).
    pub count: usize,
    /// Fewest users on each shard.
    pub per_shard_min: usize,
    /// Prefix of the usernames, unique per run.
    pub prefix: String,
    /// Letter between the prefix and the number, telling user sets apart (`u`, `l`).
    pub tag: char,
    /// Log each user in and keep its access token (login-only users need none).
    pub log_in: bool,
    /// Password of every user.
    pub password: String,
    /// The admin API key for deposits.
    pub admin_key: String,
    /// Deposit per user, in minor units of `currency` (0: none).
    pub deposit: u64,
    /// Currency of the deposit.
    pub currency: String,
    /// Connections (and threads) used for the set-up.
    pub connections: usize,
}

/// The usernames of the plan: `count` spread evenly over the shards (by the server's slot
/// function), at least `per_shard_min` on each.
pub fn plan_usernames(target: &Target, plan: &UserPlan) -> Vec<(String, usize)> {
    let shards = target.shards.max(1);
    let quota = plan.count.div_ceil(shards).max(plan.per_shard_min);
    let mut filled = vec![0usize; shards];
    let mut names = Vec::with_capacity(quota * shards);
    let mut candidate = 0u64;
    while filled.iter().any(|&count| count < quota) {
        let name = format!("{}{}{candidate}", plan.prefix, plan.tag);
        candidate += 1;
        let Some(shard) = target.shard_of_slot(slot_of_username(&name)) else {
            continue;
        };
        if filled[shard] < quota {
            filled[shard] += 1;
            names.push((name, shard));
        }
    }
    names
}

/// Signs up, funds and logs in the plan's users.
pub fn create_users(target: &Target, plan: &UserPlan) -> Result<Vec<User>, SetupError> {
    let names = plan_usernames(target, plan);
    let next = AtomicUsize::new(0);
    let users: Mutex<Vec<Option<User>>> = Mutex::new(vec![None; names.len()]);
    let failure: Mutex<Option<SetupError>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..plan.connections.clamp(1, names.len().max(1)) {
            scope.spawn(|| {
                let mut client = BlockingClient::new(target.address, &target.host, target.tls.clone());
                loop {
                    if failure.lock().expect("no panics hold this lock").is_some() {
                        return;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, shard)) = names.get(index) else {
                        return;
                    };
                    match create_user(&mut client, target, plan, name, *shard) {
                        Ok(user) => users.lock().expect("no panics hold this lock")[index] = Some(user),
                        Err(error) => {
                            failure
                                .lock()
                                .expect("no panics hold this lock")
                                .get_or_insert(error);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().expect("no panics hold this lock") {
        return Err(error);
    }
    let users: Vec<User> = users
        .into_inner()
        .expect("no panics hold this lock")
        .into_iter()
        .map(|user| user.expect("every user is created when no step failed"))
        .collect();
    eprintln!(
        "set up {} users ({} per shard) in {:.1} s",
        users.len(),
        users.len() / target.shards.max(1),
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Session {
    access_token: String,
}

fn create_user(
    client: &mut BlockingClient,
    target: &Target,
    plan: &UserPlan,
    username: &str,
    planned_shard: usize,
) -> Result<User, SetupError> {
    let credentials = serde_json::json!({ "username": username, "password": plan.password })
        .to_string()
        .into_bytes();
    let reply = send(
        client,
        "POST",
        "/v1/users",
        &[],
        Some(&credentials),
        201,
        "signup",
    )?;
    let created: Created = parse(&reply, "signup")?;
    let mut shard = planned_shard;
    if !target.ranges.is_empty() {
        let slot = slot_of_user_id(&created.id)
            .ok_or_else(|| SetupError(format!("signup: user id '{}' does not encode a slot", created.id)))?;
        match target.shard_of_slot(slot) {
            Some(placed) if placed == planned_shard => shard = placed,
            placed => {
                return Err(SetupError(format!(
                    "signup of '{username}': the server put it on slot {slot} ({}), this tool's \
                     slot function said shard {planned_shard} (CRC-16/XMODEM mod {SLOT_COUNT} disagrees)",
                    placed.map_or("another node's".to_string(), |placed| format!("shard {placed}"))
                )))
            }
        }
    }
    if plan.deposit > 0 {
        let body = serde_json::json!({
            "user_id": created.id,
            "amount": plan.deposit,
            "currency": plan.currency,
        })
        .to_string()
        .into_bytes();
        let authorization = format!("Bearer {}", plan.admin_key);
        let key = format!("{}-deposit-{username}", plan.prefix);
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Idempotency-Key", key.as_str()),
        ];
        send(
            client,
            "POST",
            "/v1/deposits",
            &headers,
            Some(&body),
            201,
            "deposit",
        )?;
    }
    let authorization = if plan.log_in {
        let reply = send(
            client,
            "POST",
            "/v1/sessions",
            &[],
            Some(&credentials),
            201,
            "login",
        )?;
        let session: Session = parse(&reply, "login")?;
        format!("Authorization: Bearer {}\r\n", session.access_token).into_bytes()
    } else {
        Vec::new()
    };
    Ok(User {
        id: created.id,
        username: username.to_string(),
        shard,
        authorization,
    })
}

/// Sends a set-up request, retrying answers 429 and 503 (throttled or overloaded) a bounded
/// number of times; any other status than `expected` is an error with the server's words.
fn send(
    client: &mut BlockingClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    expected: u16,
    step: &str,
) -> Result<Reply, SetupError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reply = client
            .request(method, path, headers, body)
            .map_err(|error| SetupError(format!("{step} ({method} {path}): {error}")))?;
        if reply.status == expected {
            return Ok(reply);
        }
        if (reply.status == 429 || reply.status == 503) && attempt < SETUP_ATTEMPTS_MAX {
            std::thread::sleep(SETUP_RETRY_WAIT);
            continue;
        }
        let hint = match (step, reply.status) {
            ("login", 429) => {
                " (the server throttles logins per client IP: raise auth.login_attempts_per_ip_max, \
                 as config/bench.toml does)"
            }
            ("deposit", 401) => " (wrong admin key: see --admin-key)",
            _ => "",
        };
        return Err(SetupError(format!(
            "{step} ({method} {path}) answered {} after {attempt} attempt(s): {}{hint}",
            reply.status,
            reply.body_text()
        )));
    }
}

fn parse<'a, T: Deserialize<'a>>(reply: &'a Reply, step: &str) -> Result<T, SetupError> {
    serde_json::from_slice(&reply.body).map_err(|error| {
        SetupError(format!(
            "{step}: unexpected answer ({error}): {}",
            reply.body_text()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_shards() -> Target {
        Target {
            address: "127.0.0.1:8080".parse().unwrap(),
            host: "127.0.0.1:8080".into(),
            shards: 2,
            ranges: vec![
                ShardRange {
                    shard: 0,
                    first_slot: 0,
                    last_slot: 8191,
                    port: 7100,
                },
                ShardRange {
                    shard: 1,
                    first_slot: 8192,
                    last_slot: 16383,
                    port: 7101,
                },
            ],
            tls: None,
        }
    }

    #[test]
    fn slots_match_the_servers_function() {
        // CRC-16/XMODEM check value: "123456789" -> 0x31C3 (12739 mod 16384 = 12739).
        assert_eq!(slot_of_username("123456789"), 0x31c3 % SLOT_COUNT);
        assert_eq!(slot_of_username("Alice"), slot_of_username("alice"));
        assert_eq!(slot_of_user_id("usr_31c3abcdef"), Some(0x31c3));
        assert_eq!(slot_of_user_id("usr_ffff0000"), None);
        assert_eq!(slot_of_user_id("usr_1a"), None);
        assert_eq!(slot_of_user_id("pay_0001"), None);
    }

    #[test]
    fn users_are_spread_evenly_over_shards() {
        let target = two_shards();
        let plan = UserPlan {
            count: 7,
            per_shard_min: 2,
            prefix: "t".into(),
            tag: 'u',
            log_in: true,
            password: String::new(),
            admin_key: String::new(),
            deposit: 0,
            currency: "USD".into(),
            connections: 1,
        };
        let names = plan_usernames(&target, &plan);
        assert_eq!(names.len(), 8, "ceil(7 / 2) per shard");
        for shard in 0..2 {
            let on_shard: Vec<_> = names.iter().filter(|(_, s)| *s == shard).collect();
            assert_eq!(on_shard.len(), 4);
            for (name, s) in on_shard {
                assert_eq!(target.shard_of_slot(slot_of_username(name)), Some(*s));
            }
        }
        let one = Target {
            shards: 1,
            ranges: Vec::new(),
            ..target
        };
        let plan = UserPlan { count: 1, ..plan };
        assert_eq!(plan_usernames(&one, &plan).len(), 2, "per-shard minimum");
    }

    #[test]
    fn cluster_maps_must_tile_the_slots() {
        let good = ClusterMap {
            shards: 2,
            slots: 16384,
            ranges: two_shards().ranges,
        };
        assert!(validate_map(&good).is_ok());
        let mut gap = ClusterMap {
            shards: 2,
            slots: 16384,
            ranges: two_shards().ranges,
        };
        gap.ranges[1].first_slot = 8193;
        assert!(validate_map(&gap).is_err());
        // One node of several: its shards tile a part of the slots.
        let mut part = ClusterMap {
            shards: 1,
            slots: 16384,
            ranges: vec![two_shards().ranges[1].clone()],
        };
        assert!(validate_map(&part).is_ok());
        let node = Target {
            shards: 1,
            ranges: part.ranges.clone(),
            ..two_shards()
        };
        assert_eq!(node.shard_of_slot(8192), Some(1));
        assert_eq!(node.shard_of_slot(8191), None);
        part.ranges[0].last_slot = 16384;
        assert!(validate_map(&part).is_err());
        let short = ClusterMap {
            shards: 3,
            slots: 16384,
            ranges: two_shards().ranges,
        };
        assert!(validate_map(&short).is_err());
        let slots = ClusterMap {
            shards: 2,
            slots: 1024,
            ranges: two_shards().ranges,
        };
        assert!(validate_map(&slots).is_err());
    }
}

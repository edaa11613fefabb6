//! What the load is made of: scenarios, request kinds and their mix, how each request is encoded,
//! and how each response is checked.
//!
//! Requests are encoded straight into a connection's output buffer from pre-built pieces (the
//! Host header, each user's Authorization header), so a request costs a few copies and no
//! allocation. Nothing here does I/O.

use std::fmt;
use std::sync::Arc;

use crate::rng::Rng;

/// A kind of request, with the route it exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `GET /plaintext`.
    Plaintext,
    /// `GET /json`.
    Json,
    /// `GET /v1/balances`, authenticated.
    Balance,
    /// `GET /v1/me`, authenticated.
    Me,
    /// `POST /v1/payments` of `amount` to another user, with a new `Idempotency-Key`.
    Payment,
    /// `GET /v1/payments?limit=10`, authenticated.
    List,
    /// `POST /v1/sessions`: a login (one argon2id verification on the server).
    Login,
    /// `POST /v1/users`: a signup of a new user (one argon2id hash on the server).
    Signup,
}

/// Every kind, in report order.
pub const KINDS: [Kind; 8] = [
    Kind::Plaintext,
    Kind::Json,
    Kind::Balance,
    Kind::Me,
    Kind::Payment,
    Kind::List,
    Kind::Login,
    Kind::Signup,
];

impl Kind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Plaintext => "plaintext",
            Kind::Json => "json",
            Kind::Balance => "balance",
            Kind::Me => "me",
            Kind::Payment => "payment",
            Kind::List => "list",
            Kind::Login => "login",
            Kind::Signup => "signup",
        }
    }

    /// Index into per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether requests of this kind act as a benchmark user (who must be set up first).
    pub fn needs_users(self) -> bool {
        matches!(
            self,
            Kind::Balance | Kind::Me | Kind::Payment | Kind::List | Kind::Login
        )
    }

    /// The status a correct answer has.
    pub fn expected_status(self) -> u16 {
        match self {
            Kind::Payment | Kind::Login | Kind::Signup => 201,
            _ => 200,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A named workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Only `GET /plaintext`.
    Plaintext,
    /// Only `GET /json`.
    Json,
    /// Only authenticated balance reads.
    Balance,
    /// Only payments (see `--cross-shard-ratio`).
    Payments,
    /// A realistic mix of logins, reads and payments ([`Mix::default_mixed`], or `--mix`).
    Mixed,
    /// Only signups of new users.
    Signup,
}

impl Scenario {
    /// Every scenario's name, for help and errors.
    pub const NAMES: &'static str = "plaintext, json, balance, payments, mixed, signup";

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Some(match name {
            "plaintext" => Scenario::Plaintext,
            "json" => Scenario::Json,
            "balance" => Scenario::Balance,
            "payments" => Scenario::Payments,
            "mixed" => Scenario::Mixed,
            "signup" => Scenario::Signup,
            _ => return None,
        })
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plaintext => "plaintext",
            Scenario::Json => "json",
            Scenario::Balance => "balance",
            Scenario::Payments => "payments",
            Scenario::Mixed => "mixed",
            Scenario::Signup => "signup",
        }
    }

    /// The mix of this scenario: one kind, or for `mixed` the given or default mix.
    pub fn mix(self, custom: Option<Mix>) -> Mix {
        let single = |kind| Mix::new(vec![(kind, 1)]).expect("one positive weight is a valid mix");
        match self {
            Scenario::Plaintext => single(Kind::Plaintext),
            Scenario::Json => single(Kind::Json),
            Scenario::Balance => single(Kind::Balance),
            Scenario::Payments => single(Kind::Payment),
            Scenario::Signup => single(Kind::Signup),
            Scenario::Mixed => custom.unwrap_or_else(Mix::default_mixed),
        }
    }
}

/// Weighted request kinds: each request is of kind `k` with probability `weight(k) / total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// (kind, weight), weights positive, kinds distinct, in the order given.
    entries: Vec<(Kind, u32)>,
    /// Running sums of the weights, for the draw.
    cumulative: Vec<u64>,
}

/// A mix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixError(pub String);

impl fmt::Display for MixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MixError {}

impl Mix {
    /// A mix of `entries`; each kind at most once, weights positive.
    pub fn new(entries: Vec<(Kind, u32)>) -> Result<Mix, MixError> {
        if entries.is_empty() {
            return Err(MixError("the mix is empty".into()));
        }
        let mut cumulative = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (index, (kind, weight)) in entries.iter().enumerate() {
            if *weight == 0 {
                return Err(MixError(format!("weight of {kind} must be positive")));
            }
            if entries[..index].iter().any(|(other, _)| other == kind) {
                return Err(MixError(format!("{kind} is in the mix twice")));
            }
            total += u64::from(*weight);
            cumulative.push(total);
        }
        Ok(Mix { entries, cumulative })
    }

    /// The documented realistic mix: 1% logins, 30% balance reads, 30% `/v1/me`, 30% payments,
    /// 9% payment listings.
    pub fn default_mixed() -> Mix {
        Mix::new(vec![
            (Kind::Login, 1),
            (Kind::Balance, 30),
            (Kind::Me, 30),
            (Kind::Payment, 30),
            (Kind::List, 9),
        ])
        .expect("the default mix is valid")
    }

    /// Parses `kind=weight,kind=weight,…`, e.g. `login=1,balance=30,me=30,payment=30,list=9`.
    pub fn parse(text: &str) -> Result<Mix, MixError> {
        let mut entries = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError(format!("'{part}' is not kind=weight")))?;
            let kind = Kind::from_name(name.trim()).ok_or_else(|| {
                MixError(format!(
                    "unknown request kind '{}' (known: {})",
                    name.trim(),
                    KINDS.map(Kind::name).join(", ")
                ))
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                MixError(format!(
                    "weight of {kind} must be a whole number, not '{}'",
                    weight.trim()
                ))
            })?;
            entries.push((kind, weight));
        }
        Mix::new(entries)
    }

    /// Draws a kind.
    pub fn pick(&self, rng: &mut Rng) -> Kind {
        let total = *self.cumulative.last().expect("a mix is never empty");
        self.kind_at(rng.below(total))
    }

    /// The kind whose share of `0..total` holds `point`.
    fn kind_at(&self, point: u64) -> Kind {
        let index = self.cumulative.partition_point(|&sum| sum <= point);
        self.entries[index].0
    }

    /// The (kind, weight) pairs.
    pub fn entries(&self) -> &[(Kind, u32)] {
        &self.entries
    }

    /// Whether any kind of the mix acts as a benchmark user.
    pub fn needs_users(&self) -> bool {
        self.entries.iter().any(|(kind, _)| kind.needs_users())
    }

    /// Whether the mix has `kind`.
    pub fn contains(&self, kind: Kind) -> bool {
        self.entries.iter().any(|(other, _)| *other == kind)
    }

    /// The mix as `kind=weight,…`.
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|(kind, weight)| format!("{kind}={weight}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A benchmark user, signed up, funded and logged in by the set-up phase.
#[derive(Debug, Clone)]
pub struct User {
    /// The server's user id (`usr_…`).
    pub id: String,
    /// The username.
    pub username: String,
    /// The user's home shard (0 without a cluster map).
    pub shard: usize,
    /// `Authorization: Bearer <access token>\r\n`.
    pub authorization: Vec<u8>,
}

/// A set of users and, per home shard, the indexes of those who live there.
#[derive(Debug, Default)]
pub struct UserSet {
    /// The users.
    pub users: Vec<User>,
    /// Indexes into `users`, per home shard.
    pub by_shard: Vec<Vec<u32>>,
}

impl UserSet {
    /// `users` indexed by their home shards (of `shards`).
    pub fn new(users: Vec<User>, shards: usize) -> Self {
        let mut by_shard = vec![Vec::new(); shards];
        for (index, user) in users.iter().enumerate() {
            by_shard[user.shard].push(index as u32);
        }
        Self { users, by_shard }
    }

    /// A random user on `shard` (shard-aware connections), else any.
    fn pick(&self, rng: &mut Rng, shard: Option<usize>) -> u32 {
        match shard {
            Some(shard) => {
                let users = &self.by_shard[shard];
                users[rng.below(users.len() as u64) as usize]
            }
            None => rng.below(self.users.len() as u64) as u32,
        }
    }

    /// The user at `index`.
    fn get(&self, index: u32) -> &User {
        &self.users[index as usize]
    }
}

/// Everything the workers share to build requests: read-only during the run.
#[derive(Debug)]
pub struct Workload {
    /// The kinds to send.
    pub mix: Mix,
    /// Benchmark users: the token users of every kind but `login`.
    pub users: UserSet,
    /// Users that only log in (the `login` kind): a user's sessions are capped (the oldest is
    /// revoked), so logging the token users in over and over would revoke the tokens the other
    /// requests carry.
    pub login_users: UserSet,
    /// Shards of the target (1 without a cluster map).
    pub shards: usize,
    /// Probability that a payment goes to a user on another shard; `None`: any user at random.
    pub cross_shard_ratio: Option<f64>,
    /// `Host: …\r\n`.
    pub host_header: Vec<u8>,
    /// Unique per run: prefixes new usernames and idempotency keys.
    pub run_prefix: String,
    /// The benchmark users' password (also used for signups).
    pub password: String,
    /// Currency of payments.
    pub currency: String,
    /// Amount of each payment, in minor units.
    pub payment_amount: u64,
}

/// What a correct answer to a request looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The request's kind.
    pub kind: Kind,
    /// Whether it was a payment to a user on another shard.
    pub cross_shard: bool,
}

/// Builds requests for one worker thread: its own generator, counters and key space.
pub struct Generator {
    /// Shared by every worker, only read; never cloned per request (its count is shared).
    workload: Arc<Workload>,
    rng: Rng,
    text: Text,
}

/// Numbers and unique names written into requests.
struct Text {
    thread: usize,
    counter: u64,
    number: itoa::Buffer,
}

impl Text {
    fn json_body(&mut self, out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        out.extend_from_slice(self.number.format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }

    /// `<run prefix><thread>x<counter>`: unique within the run (idempotency keys, usernames of
    /// at most 32 characters).
    fn unique_suffix(&mut self, run_prefix: &str, out: &mut Vec<u8>) {
        self.counter += 1;
        out.extend_from_slice(run_prefix.as_bytes());
        out.extend_from_slice(self.number.format(self.thread).as_bytes());
        out.push(b'x');
        out.extend_from_slice(self.number.format(self.counter).as_bytes());
    }
}

impl Generator {
    /// A generator for worker `thread`.
    pub fn new(workload: Arc<Workload>, thread: usize, seed: u64) -> Self {
        Self {
            workload,
            rng: Rng::new(seed),
            text: Text {
                thread,
                counter: 0,
                number: itoa::Buffer::new(),
            },
        }
    }

    /// The shared workload.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Appends the next request to `out`. `shard` is the shard the connection goes to in
    /// shard-aware mode (users are then taken from that shard), `None` for the public port.
    pub fn next_request(&mut self, shard: Option<usize>, out: &mut Vec<u8>) -> Expect {
        let workload = &*self.workload;
        let rng = &mut self.rng;
        let text = &mut self.text;
        let kind = workload.mix.pick(rng);
        let mut expect = Expect {
            kind,
            cross_shard: false,
        };
        let simple = |out: &mut Vec<u8>, request_line: &[u8], user: Option<&User>| {
            out.extend_from_slice(request_line);
            out.extend_from_slice(&workload.host_header);
            if let Some(user) = user {
                out.extend_from_slice(&user.authorization);
            }
            out.extend_from_slice(b"\r\n");
        };
        match kind {
            Kind::Plaintext => simple(out, b"GET /plaintext HTTP/1.1\r\n", None),
            Kind::Json => simple(out, b"GET /json HTTP/1.1\r\n", None),
            Kind::Balance => {
                let user = workload.users.get(workload.users.pick(rng, shard));
                simple(out, b"GET /v1/balances HTTP/1.1\r\n", Some(user));
            }
            Kind::Me => {
                let user = workload.users.get(workload.users.pick(rng, shard));
                simple(out, b"GET /v1/me HTTP/1.1\r\n", Some(user));
            }
            Kind::List => {
                let user = workload.users.get(workload.users.pick(rng, shard));
                simple(out, b"GET /v1/payments?limit=10 HTTP/1.1\r\n", Some(user));
            }
            Kind::Payment => {
                let payer = workload.users.pick(rng, shard);
                let (payee, cross_shard) = pick_payee(workload, rng, payer);
                expect.cross_shard = cross_shard;
                let payer = workload.users.get(payer);
                let payee = workload.users.get(payee);
                let mut body = Vec::with_capacity(96);
                body.extend_from_slice(b"{\"to\":\"");
                body.extend_from_slice(payee.id.as_bytes());
                body.extend_from_slice(b"\",\"amount\":");
                body.extend_from_slice(text.number.format(workload.payment_amount).as_bytes());
                body.extend_from_slice(b",\"currency\":\"");
                body.extend_from_slice(workload.currency.as_bytes());
                body.extend_from_slice(b"\"}");
                out.extend_from_slice(b"POST /v1/payments HTTP/1.1\r\n");
                out.extend_from_slice(&workload.host_header);
                out.extend_from_slice(&payer.authorization);
                out.extend_from_slice(b"Idempotency-Key: ");
                text.unique_suffix(&workload.run_prefix, out);
                out.extend_from_slice(b"\r\n");
                text.json_body(out, &body);
            }
            Kind::Login => {
                let user = workload.login_users.get(workload.login_users.pick(rng, shard));
                let body = serde_json::json!({
                    "username": user.username,
                    "password": workload.password,
                })
                .to_string();
                out.extend_from_slice(b"POST /v1/sessions HTTP/1.1\r\n");
                out.extend_from_slice(&workload.host_header);
                text.json_body(out, body.as_bytes());
            }
            Kind::Signup => {
                let mut username = Vec::with_capacity(32);
                text.unique_suffix(&workload.run_prefix, &mut username);
                let username = String::from_utf8(username).expect("prefix and counters are ASCII");
                let body = serde_json::json!({
                    "username": username,
                    "password": workload.password,
                })
                .to_string();
                out.extend_from_slice(b"POST /v1/users HTTP/1.1\r\n");
                out.extend_from_slice(&workload.host_header);
                text.json_body(out, body.as_bytes());
            }
        }
        expect
    }
}

/// A payee other than `payer`, and whether it lives on another shard.
fn pick_payee(workload: &Workload, rng: &mut Rng, payer: u32) -> (u32, bool) {
    let users = &workload.users;
    let payer_shard = users.get(payer).shard;
    let other_shards = users
        .by_shard
        .iter()
        .enumerate()
        .filter(|(shard, users)| *shard != payer_shard && !users.is_empty())
        .count();
    let cross = match workload.cross_shard_ratio {
        Some(ratio) => other_shards > 0 && rng.chance(ratio),
        None => {
            // Any other user at random.
            loop {
                let payee = users.pick(rng, None);
                if payee != payer {
                    return (payee, users.get(payee).shard != payer_shard);
                }
            }
        }
    };
    if cross {
        let mut nth = rng.below(other_shards as u64) as usize;
        for (shard, on_shard) in users.by_shard.iter().enumerate() {
            if shard == payer_shard || on_shard.is_empty() {
                continue;
            }
            if nth == 0 {
                return (users.pick(rng, Some(shard)), true);
            }
            nth -= 1;
        }
        unreachable!("nth is below the number of other shards with users");
    }
    loop {
        let payee = users.pick(rng, Some(payer_shard));
        if payee != payer {
            return (payee, false);
        }
    }
}

/// Checks a complete answer to a request of `kind`: `Ok`, or a short name of what is wrong.
pub fn check(kind: Kind, status: u16, body: &[u8]) -> Result<(), CheckError> {
    if status != kind.expected_status() {
        return Err(CheckError::Status(status));
    }
    let good = match kind {
        Kind::Plaintext => body == b"Hello, World!",
        Kind::Json => body == br#"{"message":"Hello, World!"}"#,
        Kind::Balance => body.starts_with(br#"{"data":["#) && contains(body, b"\"available\":"),
        Kind::Me => contains(body, b"\"id\":\"usr_") && contains(body, b"\"username\":\""),
        Kind::List => body.starts_with(br#"{"data":["#) && contains(body, b"\"has_more\":"),
        Kind::Login => contains(body, b"\"access_token\":\""),
        Kind::Signup => contains(body, b"\"id\":\"usr_"),
        Kind::Payment => payment_is_good(body),
    };
    if good {
        Ok(())
    } else {
        Err(CheckError::Body)
    }
}

/// What an answer to a request of some kind was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The right answer.
    Ok,
    /// Refused by the server's admission control (503 `overloaded`): shed, not failed.
    Shed,
    /// Wrong: an unexpected status (any other 503 included) or a bad body.
    Failed(CheckError),
}

/// Classifies a complete answer: [`check`], except that a 503 whose JSON body says
/// `"error": {"code": "overloaded"}` is [`Outcome::Shed`] (the server refused the request before
/// doing any of it, and said so).
pub fn classify(kind: Kind, status: u16, body: &[u8]) -> Outcome {
    match check(kind, status, body) {
        Ok(()) => Outcome::Ok,
        Err(_) if is_overloaded(status, body) => Outcome::Shed,
        Err(error) => Outcome::Failed(error),
    }
}

/// Whether an answer is the server's overload refusal: status 503 and a JSON body whose
/// `error.code` is `"overloaded"`.
pub fn is_overloaded(status: u16, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        error: ErrorBody<'a>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody<'a> {
        #[serde(borrow)]
        code: std::borrow::Cow<'a, str>,
    }
    status == 503
        && serde_json::from_slice::<Envelope>(body).is_ok_and(|envelope| envelope.error.code == "overloaded")
}

/// Why an answer is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckError {
    /// An unexpected status.
    Status(u16),
    /// The expected status with a body that is not the right answer.
    Body,
}

fn payment_is_good(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Payment<'a> {
        #[serde(borrow)]
        id: &'a str,
        status: &'a str,
        amount: u64,
    }
    match serde_json::from_slice::<Payment>(body) {
        Ok(payment) => payment.id.starts_with("pay_") && payment.status == "succeeded" && payment.amount > 0,
        Err(_) => false,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overloaded_503_is_shed_and_any_other_503_an_error() {
        let overloaded = br#"{"error":{"type":"api_error","code":"overloaded","message":"The server is overloaded and did not process this request; retry after Retry-After seconds."},"request_id":"req_1"}"#;
        for kind in KINDS {
            assert_eq!(classify(kind, 503, overloaded), Outcome::Shed, "{kind}");
        }
        // Another 503 (a full idempotency store, a mesh time-out) stays an error.
        let other = br#"{"error":{"type":"api_error","code":"idempotency_keys_full","message":"x"},"request_id":"req_2"}"#;
        assert_eq!(
            classify(Kind::Payment, 503, other),
            Outcome::Failed(CheckError::Status(503))
        );
        // The overloaded body with another status, or not JSON, or the code elsewhere: errors.
        assert_eq!(
            classify(Kind::Balance, 500, overloaded),
            Outcome::Failed(CheckError::Status(500))
        );
        assert_eq!(
            classify(Kind::Balance, 503, b"overloaded"),
            Outcome::Failed(CheckError::Status(503))
        );
        assert_eq!(
            classify(Kind::Balance, 503, br#"{"code":"overloaded"}"#),
            Outcome::Failed(CheckError::Status(503))
        );
        assert_eq!(
            classify(Kind::Balance, 503, br#"{"error":{"code":"overloaded_not"}}"#),
            Outcome::Failed(CheckError::Status(503))
        );
        assert!(!is_overloaded(503, br#"{"error":{"code":"overl\u0061aded"}}"#));
        assert!(is_overloaded(503, br#"{"error":{"code":"overload\u0065d"}}"#));
        // A right answer is ok, a wrong body with the right status an error.
        assert_eq!(classify(Kind::Plaintext, 200, b"Hello, World!"), Outcome::Ok);
        assert_eq!(
            classify(Kind::Plaintext, 200, b"nope"),
            Outcome::Failed(CheckError::Body)
        );
    }

    fn workload(mix: Mix, shards_of_users: &[usize], ratio: Option<f64>) -> Arc<Workload> {
        let shards = shards_of_users.iter().max().map_or(1, |max| max + 1);
        let users = shards_of_users
            .iter()
            .enumerate()
            .map(|(index, &shard)| User {
                id: format!("usr_{index:04x}"),
                username: format!("user{index}"),
                shard,
                authorization: format!("Authorization: Bearer token{index}\r\n").into_bytes(),
            })
            .collect();
        let login_users: Vec<User> = (0..shards)
            .map(|shard| User {
                id: format!("usr_{shard:04x}ffff"),
                username: format!("login{shard}"),
                shard,
                authorization: Vec::new(),
            })
            .collect();
        Arc::new(Workload {
            mix,
            users: UserSet::new(users, shards),
            login_users: UserSet::new(login_users, shards),
            shards,
            cross_shard_ratio: ratio,
            host_header: b"Host: localhost\r\n".to_vec(),
            run_prefix: "run".into(),
            password: "a-long-password".into(),
            currency: "USD".into(),
            payment_amount: 3,
        })
    }

    #[test]
    fn default_mix_is_the_documented_one() {
        let mix = Mix::default_mixed();
        assert_eq!(mix.describe(), "login=1,balance=30,me=30,payment=30,list=9");
        assert_eq!(Mix::parse(&mix.describe()), Ok(mix));
    }

    #[test]
    fn each_kind_owns_exactly_its_weight_of_the_draw() {
        let mix = Mix::parse("login=1,balance=30,payment=9").unwrap();
        let kinds: Vec<Kind> = (0..40).map(|point| mix.kind_at(point)).collect();
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Login).count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Balance).count(), 30);
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Payment).count(), 9);
        assert_eq!(kinds[0], Kind::Login);
        assert_eq!(kinds[1], Kind::Balance);
        assert_eq!(kinds[30], Kind::Balance);
        assert_eq!(kinds[31], Kind::Payment);
        assert_eq!(kinds[39], Kind::Payment);
    }

    #[test]
    fn drawn_shares_follow_the_weights() {
        let mix = Mix::default_mixed();
        let mut rng = Rng::new(42);
        let mut counts = [0u32; KINDS.len()];
        let draws = 200_000;
        for _ in 0..draws {
            counts[mix.pick(&mut rng).index()] += 1;
        }
        for (kind, weight) in mix.entries() {
            let share = f64::from(counts[kind.index()]) / f64::from(draws);
            let expected = f64::from(*weight) / 100.0;
            assert!((share - expected).abs() < 0.005, "{kind}: {share} vs {expected}");
        }
        assert_eq!(counts[Kind::Plaintext.index()], 0);
    }

    #[test]
    fn bad_mixes_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("login=0", "positive"),
            ("login=1,login=2", "twice"),
            ("logins=1", "unknown request kind 'logins'"),
            ("login", "not kind=weight"),
            ("login=x", "whole number"),
            ("login=-1", "whole number"),
        ] {
            let error = Mix::parse(text).unwrap_err();
            assert!(error.0.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn payments_honour_the_cross_shard_ratio() {
        let users = [0, 0, 0, 1, 1, 1, 2, 2];
        for ratio in [0.0, 0.3, 1.0] {
            let workload = workload(Scenario::Payments.mix(None), &users, Some(ratio));
            let mut generator = Generator::new(Arc::clone(&workload), 0, 9);
            let mut cross = 0;
            for _ in 0..10_000 {
                let mut out = Vec::new();
                let expect = generator.next_request(Some(1), &mut out);
                let text = String::from_utf8(out).unwrap();
                // The payer is on the connection's shard 1 (users 3..=5).
                let payer = (3..=5).find(|i| text.contains(&format!("Bearer token{i}\r\n")));
                assert!(payer.is_some(), "{text}");
                let payee = (0..8)
                    .find(|i| text.contains(&format!("\"to\":\"usr_{i:04x}\"")))
                    .unwrap();
                assert_ne!(Some(payee), payer);
                assert_eq!(expect.cross_shard, users[payee] != 1);
                cross += usize::from(expect.cross_shard);
            }
            let share = cross as f64 / 10_000.0;
            assert!((share - ratio).abs() < 0.02, "ratio {ratio}: {share}");
        }
    }

    #[test]
    fn requests_are_well_formed_http() {
        let workload = workload(
            Mix::parse("plaintext=1,json=1,balance=1,me=1,payment=1,list=1,login=1,signup=1").unwrap(),
            &[0, 0, 1, 1],
            None,
        );
        let mut generator = Generator::new(workload, 3, 5);
        let mut keys = std::collections::HashSet::new();
        for _ in 0..500 {
            let mut out = Vec::new();
            let expect = generator.next_request(None, &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            let head = match request.parse(&out).unwrap() {
                httparse::Status::Complete(head) => head,
                httparse::Status::Partial => panic!("incomplete request {out:?}"),
            };
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
            };
            let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
            assert_eq!(out.len(), head + length, "one whole request per call");
            assert!(header("host").is_some());
            if length > 0 {
                serde_json::from_slice::<serde_json::Value>(&out[head..]).unwrap();
            }
            if expect.kind == Kind::Payment {
                assert!(keys.insert(header("idempotency-key").unwrap()), "repeated key");
            }
            if expect.kind == Kind::Login {
                // Login-only users, never the ones whose tokens the other requests carry.
                let body = std::str::from_utf8(&out[head..]).unwrap();
                assert!(body.contains("\"username\":\"login"), "{body}");
            }
            if expect.kind.needs_users() && expect.kind != Kind::Login {
                assert!(header("authorization").unwrap().starts_with("Bearer token"));
            }
        }
    }

    #[test]
    fn answers_are_checked_by_status_and_body() {
        let payment = br#"{"id":"pay_1","from":"usr_a","to":"usr_b","amount":3,"currency":"USD","description":null,"status":"succeeded","amount_refunded":0,"created_at":"x"}"#;
        assert_eq!(check(Kind::Payment, 201, payment), Ok(()));
        assert_eq!(check(Kind::Payment, 200, payment), Err(CheckError::Status(200)));
        assert_eq!(check(Kind::Payment, 201, b"{}"), Err(CheckError::Body));
        assert_eq!(check(Kind::Plaintext, 200, b"Hello, World!"), Ok(()));
        assert_eq!(check(Kind::Plaintext, 200, b"Hello"), Err(CheckError::Body));
        assert_eq!(check(Kind::Balance, 429, b""), Err(CheckError::Status(429)));
        assert_eq!(
            check(
                Kind::Balance,
                200,
                br#"{"data":[{"currency":"USD","available":5}]}"#
            ),
            Ok(())
        );
    }
}

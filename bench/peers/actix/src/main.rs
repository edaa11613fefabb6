//! Benchmark peer: actix-web 4 with ONE worker, TechEmpower style.
//!
//! * `GET /plaintext` answers `Hello, World!` (text/plain);
//! * `GET /json` answers `{"message":"Hello, World!"}` (application/json),
//!   serialized with serde_json on every request.
//!
//! Otherwise default-configured (keep-alive, backlog, max connections, ...),
//! no logging middleware. Responses carry `Server`, `Date`, `Content-Type` and
//! `Content-Length`, like the other targets. CPU pinning is done by the
//! benchmark script (`taskset`).

use std::net::SocketAddr;

use actix_web::http::header::{HeaderValue, CONTENT_TYPE, SERVER};
use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

static SERVER_NAME: HeaderValue = HeaderValue::from_static("actix");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

async fn plaintext() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((SERVER, SERVER_NAME.clone()))
        .insert_header((CONTENT_TYPE, TEXT_PLAIN.clone()))
        .body("Hello, World!")
}

async fn json() -> HttpResponse {
    let body = serde_json::to_vec(&Message {
        message: "Hello, World!",
    })
    .expect("serializing a static message cannot fail");
    HttpResponse::Ok()
        .insert_header((SERVER, SERVER_NAME.clone()))
        .insert_header((CONTENT_TYPE, APPLICATION_JSON.clone()))
        .body(body)
}

fn parse_listen() -> SocketAddr {
    let usage = || -> ! {
        eprintln!("usage: peer-actix [--listen ADDR (default 127.0.0.1:8082)]");
        std::process::exit(2)
    };
    let mut listen: SocketAddr = "127.0.0.1:8082".parse().expect("valid default address");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = match flag.split_once('=') {
            Some(("--listen", v)) => v.to_string(),
            None if flag == "--listen" => it.next().unwrap_or_else(|| usage()),
            _ => usage(),
        };
        listen = value.parse().unwrap_or_else(|_| usage());
    }
    listen
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = parse_listen();
    eprintln!("peer-actix listening on {listen} (1 worker)");
    HttpServer::new(|| {
        App::new()
            .route("/plaintext", web::get().to(plaintext))
            .route("/json", web::get().to(json))
    })
    .workers(1)
    .bind(listen)?
    .run()
    .await
}

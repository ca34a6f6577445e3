//! A page body whose Content-Length lies or is absurd: an error the
//! fetcher retries, never a panic, a hang or a buffer of that size.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::read_body;

/// Answers one request with `head` (status line and headers, without the
/// blank line) and `body`, then closes the connection.
async fn answer_once(head: &'static str, body: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        // The request head is small; one bounded read is enough to drain it.
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await;
        let _ = conn.write_all(head.as_bytes()).await;
        let _ = conn.write_all(b"\r\nConnection: close\r\n\r\n").await;
        let _ = conn.write_all(body).await;
        let _ = conn.shutdown().await;
    });
    format!("http://{addr}/page")
}

async fn read(head: &'static str, body: &'static [u8]) -> reqwest::Result<bytes::Bytes> {
    let url = answer_once(head, body).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let resp = client.get(url).send().await?;
    tokio::time::timeout(Duration::from_secs(10), read_body(resp))
        .await
        .expect("the body read ends by itself")
}

/// Reads the answer `head` + `body` and checks the page read is `page`.
async fn reads(head: &'static str, body: &'static [u8], page: &[u8]) {
    let read = read(head, body).await.expect("read");
    assert_eq!(&read[..], page, "{head:?}");
}

/// Reads the answer `head` + `body` and checks it is an error, not a page.
async fn refuses(head: &'static str, body: &'static [u8]) {
    let read = read(head, body).await;
    assert!(read.is_err(), "a body cut short is not a page: {read:?}");
}

#[tokio::test]
async fn an_honest_content_length_reads_the_whole_body() {
    let page = b"{\"data\":[]}";
    reads("HTTP/1.1 200 OK\r\nContent-Length: 11", page, page).await;
}

#[tokio::test]
async fn a_body_without_content_length_is_read_to_its_end() {
    reads(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
        b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        b"{\"a\":1}",
    )
    .await;
}

#[tokio::test]
async fn a_content_length_larger_than_the_body_is_an_error() {
    refuses("HTTP/1.1 200 OK\r\nContent-Length: 100", b"{\"data\":[]}").await;
}

#[tokio::test]
async fn an_absurd_content_length_is_an_error_not_a_huge_buffer() {
    // 8 EiB: pre-sizing a buffer from it would panic (capacity overflow)
    // or abort (allocation failure).
    refuses(
        "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807",
        b"{\"data\":[]}",
    )
    .await;
}

#[tokio::test]
async fn a_content_length_smaller_than_the_body_reads_only_that_many_bytes() {
    // HTTP/1.1 framing: the rest is not this answer's body; the cut page
    // fails to parse (and is retried) rather than passing as complete.
    reads(
        "HTTP/1.1 200 OK\r\nContent-Length: 4",
        b"{\"data\":[]}",
        b"{\"da",
    )
    .await;
}

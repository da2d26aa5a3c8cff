use super::*;

/// A query for `name` of type `qtype`, id 0x1234, recursion desired.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut out = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
const TYPE_AAAA: u16 = 28;

/// The A records of a response, and its rcode.
fn answers(response: &[u8]) -> (u8, Vec<Ipv4Addr>) {
    let rcode = response[3] & 0x0F;
    let ancount = u16::from_be_bytes([response[6], response[7]]) as usize;
    let mut at = question(&{
        // Parse the question as if it were a query, to find where answers start.
        let mut copy = response.to_vec();
        copy[2] &= 0x7F;
        copy
    })
    .expect("the response repeats the question")
    .end;
    let mut ips = Vec::new();
    for _ in 0..ancount {
        assert_eq!(
            &response[at..at + 2],
            &[0xC0, 0x0C],
            "the name points at the question"
        );
        let rtype = u16::from_be_bytes([response[at + 2], response[at + 3]]);
        let ttl = u32::from_be_bytes(response[at + 6..at + 10].try_into().unwrap());
        let len = u16::from_be_bytes([response[at + 10], response[at + 11]]) as usize;
        assert_eq!((rtype, len, ttl), (TYPE_A, 4, LOCAL_TTL));
        let ip: [u8; 4] = response[at + 12..at + 16].try_into().unwrap();
        ips.push(ip.into());
        at += 12 + len;
    }
    assert_eq!(at, response.len(), "nothing after the answers");
    (rcode, ips)
}

#[test]
fn a_service_url_under_localhost_resolves_to_the_gateway() {
    for name in ["beta.localhost", "tag---beta.localhost", "Beta.LocalHost"] {
        let Decision::Local(response) = decide(&query(name, TYPE_A), GATEWAY) else {
            panic!("{name} is answered here");
        };
        assert_eq!(&response[..2], &[0x12, 0x34], "the query's id");
        assert_eq!(response[2] & 0x80, 0x80, "a response");
        assert_eq!(response[2] & 0x01, 0x01, "recursion desired is copied");
        assert_eq!(answers(&response), (0, vec![GATEWAY]), "{name}");
    }
}

#[test]
fn ipv6_questions_for_local_names_get_an_empty_answer_so_clients_use_ipv4() {
    let Decision::Local(response) = decide(&query("beta.localhost", TYPE_AAAA), GATEWAY) else {
        panic!("answered here");
    };
    assert_eq!(answers(&response), (0, vec![]));
}

#[test]
fn other_names_and_bare_localhost_are_asked_of_the_host() {
    for name in [
        "example.com",
        "localhost",
        "localhost.example.com",
        "notlocalhost",
    ] {
        assert_eq!(
            decide(&query(name, TYPE_A), GATEWAY),
            Decision::Forward,
            "{name}"
        );
    }
}

#[test]
fn a_malformed_query_gets_formerr_and_a_response_or_a_scrap_gets_nothing() {
    let mut truncated = query("beta.localhost", TYPE_A);
    truncated.truncate(20);
    let Decision::Malformed(Some(response)) = decide(&truncated, GATEWAY) else {
        panic!("a truncated query is answered with FORMERR");
    };
    assert_eq!(response[3] & 0x0F, RCODE_FORMERR);
    assert_eq!(response.len(), 12, "no question to repeat");

    let mut two_questions = query("beta.localhost", TYPE_A);
    two_questions[5] = 2;
    assert!(matches!(
        decide(&two_questions, GATEWAY),
        Decision::Malformed(Some(_))
    ));

    let mut a_response = query("beta.localhost", TYPE_A);
    a_response[2] |= 0x80;
    assert_eq!(decide(&a_response, GATEWAY), Decision::Malformed(None));
    assert_eq!(decide(&[1, 2, 3], GATEWAY), Decision::Malformed(None));

    let mut long_label = query("beta.localhost", TYPE_A);
    long_label[12] = 64;
    assert!(matches!(
        decide(&long_label, GATEWAY),
        Decision::Malformed(Some(_))
    ));
}

#[test]
fn upstream_servers_are_the_nameserver_lines() {
    let conf = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  ::1\nnameserver fe80::1%eth0\noptions ndots:0\n";
    assert_eq!(
        upstream_servers(conf),
        vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
    );
}

/// A name server that answers every query with its id and one A record, 10.9.8.7.
async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let query = &buf[..len];
            let end = question(query).unwrap().end;
            let mut answer = response(query, end, 0, Some(Ipv4Addr::new(10, 9, 8, 7)));
            answer[2] &= !0x04; // not authoritative: a relayed answer
            socket.send_to(&answer, from).await.unwrap();
        }
    });
    (addr, task)
}

async fn ask_udp(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 512];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("the server answers")
        .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test]
async fn the_server_answers_local_names_and_relays_the_rest_over_udp_and_tcp() {
    let (upstream, fake) = fake_upstream().await;
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let dns = Dns::start(
        "127.0.0.1:0".parse().unwrap(),
        DnsConfig {
            local: GATEWAY,
            upstream: vec![upstream],
        },
        &tasks,
        stop.clone(),
    )
    .await
    .unwrap();

    let local = ask_udp(dns.addr, &query("beta.localhost", TYPE_A)).await;
    assert_eq!(answers(&local), (0, vec![GATEWAY]));
    assert_eq!(local[2] & 0x04, 0x04, "authoritative");
    let relayed = ask_udp(dns.addr, &query("example.com", TYPE_A)).await;
    assert_eq!(answers(&relayed), (0, vec![Ipv4Addr::new(10, 9, 8, 7)]));
    assert_eq!(relayed[2] & 0x04, 0, "the upstream's answer, unchanged");

    // TCP, as a client retries after a truncated answer: local names only (the fake
    // upstream has no TCP side, so a forwarded name gets SERVFAIL).
    let mut stream = TcpStream::connect(dns.addr).await.unwrap();
    write_tcp_message(&mut stream, &query("tag---beta.localhost", TYPE_A))
        .await
        .unwrap();
    let answer = read_tcp_message(&mut stream).await.unwrap();
    assert_eq!(answers(&answer), (0, vec![GATEWAY]));
    write_tcp_message(&mut stream, &query("example.com", TYPE_A))
        .await
        .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), read_tcp_message(&mut stream))
        .await
        .expect("SERVFAIL comes within the upstream timeout")
        .expect("an answer");
    assert_eq!(failed[3] & 0x0F, RCODE_SERVFAIL);

    stop.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("the server's tasks end when stopped");
    fake.abort();
}

#[tokio::test]
async fn two_servers_share_the_port() {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let config = DnsConfig {
        local: GATEWAY,
        upstream: vec![],
    };
    let first = Dns::start(
        "127.0.0.1:0".parse().unwrap(),
        config.clone(),
        &tasks,
        stop.clone(),
    )
    .await
    .unwrap();
    let second = Dns::start(first.addr, config, &tasks, stop.clone())
        .await
        .expect("SO_REUSEPORT lets a second emulator bind the same address");
    assert_eq!(second.addr, first.addr);
    let answer = ask_udp(first.addr, &query("beta.localhost", TYPE_A)).await;
    assert_eq!(answers(&answer), (0, vec![GATEWAY]));
    stop.cancel();
}

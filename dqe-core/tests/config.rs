//! Validation of the cluster description: each broken rule gives its own error.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dqe_core::config::{
    ClusterModel, ClusterSpec, ConfigError, MAX_RETAIN_EPOCHS, NodeSpec, validation_scratch_words,
};

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), port)
}

fn node(name: &str, host: u8) -> NodeSpec {
    NodeSpec {
        name: name.try_into().unwrap(),
        portal: addr(host, 7000),
        storer: addr(host, 7001),
        source: addr(host, 7002),
    }
}

fn cluster(n: usize, r: u8) -> ClusterSpec<8> {
    let mut nodes = heapless::Vec::new();
    for i in 0..n {
        nodes.push(node(&format!("node{i}"), i as u8 + 1)).unwrap();
    }
    ClusterSpec::with_defaults(nodes, r)
}

#[test]
fn a_well_formed_cluster_is_valid() {
    for n in 1..=8 {
        for r in 1..=n as u8 {
            assert_eq!(cluster(n, r).validate(), Ok(()), "n={n} r={r}");
        }
    }
}

#[test]
fn defaults_follow_the_protocol() {
    let c = cluster(5, 3);
    assert_eq!(c.vnodes, 16);
    assert_eq!(c.handoff, 2);
    assert_eq!(c.epoch_seconds, 86_400);
    assert_eq!(c.grace, 1);
    assert_eq!(c.retain_epochs, 3);
    // handoff = min(2, nodes - r)
    assert_eq!(cluster(4, 3).handoff, 1);
    assert_eq!(cluster(3, 3).handoff, 0);
    assert_eq!(ClusterSpec::<8>::default_handoff(10, 3), 2);
    assert_eq!(ClusterSpec::<8>::default_handoff(4, 3), 1);
}

#[test]
fn empty_cluster() {
    assert_eq!(cluster(0, 1).validate(), Err(ConfigError::Empty));
}

#[test]
fn empty_name() {
    let mut c = cluster(3, 2);
    c.nodes[1].name.clear();
    assert_eq!(c.validate(), Err(ConfigError::EmptyName { node: 1 }));
}

#[test]
fn duplicate_names() {
    let mut c = cluster(4, 2);
    c.nodes[3].name = "node1".try_into().unwrap();
    assert_eq!(
        c.validate(),
        Err(ConfigError::DuplicateName {
            first: 1,
            second: 3
        })
    );
}

#[test]
fn duplicate_addresses_between_nodes() {
    // Node 2's storer port is node 0's portal port.
    let mut c = cluster(3, 2);
    c.nodes[2].storer = addr(1, 7000);
    assert_eq!(
        c.validate(),
        Err(ConfigError::DuplicateAddress {
            first: 0,
            second: 2,
            addr: addr(1, 7000)
        })
    );
    // Same source on two nodes.
    let mut c = cluster(3, 2);
    c.nodes[1].source = c.nodes[0].source;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::DuplicateAddress {
            first: 0,
            second: 1,
            ..
        })
    ));
}

#[test]
fn duplicate_addresses_within_a_node() {
    let mut c = cluster(2, 1);
    c.nodes[1].source = c.nodes[1].portal;
    assert_eq!(
        c.validate(),
        Err(ConfigError::DuplicateAddress {
            first: 1,
            second: 1,
            addr: addr(2, 7000)
        })
    );
    let mut c = cluster(2, 1);
    c.nodes[0].source = c.nodes[0].storer;
    assert_eq!(
        c.validate(),
        Err(ConfigError::DuplicateAddress {
            first: 0,
            second: 0,
            addr: addr(1, 7001)
        })
    );
}

#[test]
fn same_port_on_other_hosts_or_families_is_fine() {
    let mut c = cluster(2, 1);
    c.nodes[1].portal = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7000);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn replication_out_of_range() {
    assert_eq!(
        cluster(3, 0).validate(),
        Err(ConfigError::ReplicationOutOfRange {
            replication: 0,
            nodes: 3
        })
    );
    assert_eq!(
        cluster(3, 4).validate(),
        Err(ConfigError::ReplicationOutOfRange {
            replication: 4,
            nodes: 3
        })
    );
}

#[test]
fn no_vnodes() {
    let mut c = cluster(3, 2);
    c.vnodes = 0;
    assert_eq!(c.validate(), Err(ConfigError::NoVnodes));
}

#[test]
fn handoff_out_of_range() {
    let mut c = cluster(5, 3);
    c.handoff = 2;
    assert_eq!(c.validate(), Ok(()));
    c.handoff = 3;
    assert_eq!(
        c.validate(),
        Err(ConfigError::HandoffOutOfRange { handoff: 3, max: 2 })
    );
}

#[test]
fn zero_epoch() {
    let mut c = cluster(3, 2);
    c.epoch_seconds = 0;
    assert_eq!(c.validate(), Err(ConfigError::ZeroEpoch));
}

#[test]
fn retain_must_outlive_grace() {
    let mut c = cluster(3, 2);
    c.grace = 2;
    c.retain_epochs = 2;
    assert_eq!(
        c.validate(),
        Err(ConfigError::RetainTooShort {
            retain_epochs: 2,
            grace: 2
        })
    );
    c.retain_epochs = 3;
    assert_eq!(c.validate(), Ok(()));
}

/// The index span of a retained key is a cluster rule, checked here once for every reader.
#[test]
fn retain_is_at_most_the_limit() {
    let mut c = cluster(3, 2);
    c.retain_epochs = MAX_RETAIN_EPOCHS;
    assert_eq!(c.validate(), Ok(()));
    c.retain_epochs = MAX_RETAIN_EPOCHS + 1;
    assert_eq!(
        c.validate(),
        Err(ConfigError::RetainTooLong {
            retain_epochs: MAX_RETAIN_EPOCHS + 1
        })
    );
}

#[test]
fn errors_explain_themselves() {
    let errors = [
        ConfigError::Empty,
        ConfigError::TooManyNodes { capacity: 8 },
        ConfigError::EmptyName { node: 1 },
        ConfigError::DuplicateName {
            first: 0,
            second: 1,
        },
        ConfigError::DuplicateAddress {
            first: 0,
            second: 1,
            addr: addr(1, 7000),
        },
        ConfigError::ReplicationOutOfRange {
            replication: 4,
            nodes: 3,
        },
        ConfigError::NoVnodes,
        ConfigError::HandoffOutOfRange { handoff: 3, max: 2 },
        ConfigError::ZeroEpoch,
        ConfigError::RetainTooShort {
            retain_epochs: 1,
            grace: 1,
        },
        ConfigError::RetainTooLong { retain_epochs: 300 },
    ];
    let mut seen = Vec::new();
    for e in errors {
        let text = e.to_string();
        assert!(!text.is_empty());
        assert!(!seen.contains(&text), "two errors read the same: {text}");
        seen.push(text);
    }
}

#[test]
fn lookups_and_epochs() {
    let mut c = cluster(3, 2);
    assert_eq!(c.index_of("node2"), Some(2));
    assert_eq!(c.index_of("node9"), None);
    assert_eq!(c.epoch_of(0), 0);
    assert_eq!(c.epoch_of(86_399), 0);
    assert_eq!(c.epoch_of(86_400), 1);
    assert_eq!(c.epoch_of(1_764_115_200), 20_418);
    // retain_epochs = 3: epochs now-2, now-1 and now are kept.
    assert_eq!(c.oldest_retained(10), 8);
    assert_eq!(c.oldest_retained(1), 0);
    c.epoch_seconds = 60;
    assert_eq!(c.epoch_of(119), 1);
}

#[test]
fn the_cluster_tag_depends_on_what_assignment_depends_on() {
    let base = cluster(3, 2).cluster_tag();
    assert_ne!(base, 0);
    assert_ne!(cluster(3, 1).cluster_tag(), base);
    let mut more_points = cluster(3, 2);
    more_points.vnodes = 17;
    assert_ne!(more_points.cluster_tag(), base);
    let mut renamed = cluster(3, 2);
    renamed.nodes[2].name = "node2x".try_into().unwrap();
    assert_ne!(renamed.cluster_tag(), base);
    let mut reordered = cluster(3, 2);
    reordered.nodes.swap(0, 1);
    assert_ne!(reordered.cluster_tag(), base);
    // Version 2 covers every address and the handoff depth too: two clusters that differ
    // only there no longer share a tag.
    for role in 0..3 {
        let mut moved = cluster(3, 2);
        let n = &mut moved.nodes[0];
        *[&mut n.portal, &mut n.storer, &mut n.source][role] = addr(99, 9000);
        assert_ne!(moved.cluster_tag(), base, "role {role}");
    }
    let mut deeper = cluster(3, 2);
    deeper.handoff = 0;
    assert_ne!(deeper.cluster_tag(), base);
}

/// Issue 8 item 13: `"a\0b"` as one node and `a`, `b` as two gave one tag.
#[test]
fn control_characters_in_names_are_refused() {
    for bad in ["a\0b", "tab\there", "new\nline", "del\u{7f}", "c1\u{85}"] {
        let mut c = cluster(3, 2);
        c.nodes[1].name = bad.try_into().unwrap();
        assert_eq!(
            c.validate(),
            Err(ConfigError::ControlInName { node: 1 }),
            "{bad:?}"
        );
    }
    // Other UTF-8 is fine, up to 64 bytes.
    let mut c = cluster(3, 2);
    c.nodes[1].name = "nœud-é".try_into().unwrap();
    assert_eq!(c.validate(), Ok(()));
    c.nodes[1].name = "x".repeat(64).as_str().try_into().unwrap();
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn port_zero_is_refused() {
    let mut c = cluster(3, 2);
    c.nodes[2].storer = addr(3, 0);
    assert_eq!(
        c.validate(),
        Err(ConfigError::ZeroPort {
            node: 2,
            addr: addr(3, 0)
        })
    );
}

#[test]
fn a_wildcard_and_an_address_on_its_port_are_refused() {
    let any4 = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let any6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    // Across nodes: node 0 portal 10.0.0.1:7000, node 1 portal 0.0.0.0:7000.
    let mut c = cluster(3, 2);
    c.nodes[1].portal = any4(7000);
    assert_eq!(
        c.validate(),
        Err(ConfigError::OverlappingAddress {
            first: 0,
            second: 1,
            first_addr: addr(1, 7000),
            second_addr: any4(7000),
        })
    );
    // `[::]` is dual-stack: it takes IPv4 ports too.
    let mut c = cluster(3, 2);
    c.nodes[2].source = any6(7001);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::OverlappingAddress { .. })
    ));
    // Within one node.
    let mut c = cluster(1, 1);
    c.nodes[0].portal = any4(7001);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::OverlappingAddress {
            first: 0,
            second: 0,
            ..
        })
    ));
    // `0.0.0.0` does not take an IPv6 address's port; other ports are free.
    let mut c = cluster(2, 1);
    c.nodes[0].portal = any4(7000);
    c.nodes[1].portal = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7000);
    c.nodes[1].storer = any4(8001);
    c.nodes[1].source = addr(9, 7003);
    assert_eq!(c.validate(), Ok(()));
    // An IPv4-mapped IPv6 address is the IPv4 address.
    let mut c = cluster(2, 1);
    c.nodes[1].portal = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        7000,
    );
    assert!(matches!(
        c.validate(),
        Err(ConfigError::DuplicateAddress { .. })
    ));
}

#[test]
fn a_preference_list_deeper_than_the_portal_reads_is_refused() {
    let mut nodes = heapless::Vec::<NodeSpec, 40>::new();
    for i in 0..40u16 {
        let a = |k: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)), 1000 + 3 * i + k);
        let n = NodeSpec {
            name: format!("n{i}").as_str().try_into().unwrap(),
            portal: a(0),
            storer: a(1),
            source: a(2),
        };
        nodes.push(n).unwrap();
    }
    let c = ClusterSpec::with_defaults(nodes, 31);
    assert_eq!(
        c.validate(),
        Err(ConfigError::PreferenceTooDeep {
            replication: 31,
            handoff: 2
        })
    );
}

/// The pairwise rules as they read before validation learnt to skip the pair comparisons
/// (names and addresses hashed first): the first offending pair in config order.
fn pairwise_reference<const N: usize>(c: &ClusterSpec<N>) -> Result<(), ConfigError> {
    for (i, a) in c.nodes.iter().enumerate() {
        for (j, b) in c.nodes.iter().enumerate().skip(i + 1) {
            if a.name == b.name {
                return Err(ConfigError::DuplicateName {
                    first: i,
                    second: j,
                });
            }
            for x in [a.portal, a.storer, a.source] {
                for y in [b.portal, b.storer, b.source] {
                    if x.port() != y.port() {
                        continue;
                    }
                    let canon = |s: SocketAddr| s.ip().to_canonical();
                    if canon(x) == canon(y) {
                        return Err(ConfigError::DuplicateAddress {
                            first: i,
                            second: j,
                            addr: y,
                        });
                    }
                    let covers = |w: SocketAddr, o: SocketAddr| {
                        w.ip().is_unspecified() && (w.is_ipv6() || canon(o).is_ipv4())
                    };
                    if covers(x, y) || covers(y, x) {
                        return Err(ConfigError::OverlappingAddress {
                            first: i,
                            second: j,
                            first_addr: x,
                            second_addr: y,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

proptest::proptest! {
    /// With room for 1,024 nodes the port bitmap covers every port, so validation decides
    /// most clusters without comparing pairs; it must still give exactly the error (or the
    /// `Ok`) of the pairwise rules, whatever names, hosts, families and ports collide.
    #[test]
    fn skipping_pair_comparisons_changes_no_verdict(
        nodes in proptest::collection::vec(
            (0u8..12, 0u8..4, [1u16..40, 1u16..40, 1u16..40]),
            1..24,
        ),
        spread in proptest::bool::ANY,
    ) {
        let mut specs = heapless::Vec::<NodeSpec, 1024>::new();
        for (i, (name, host, ports)) in nodes.iter().enumerate() {
            let ip = |k: usize| match host {
                0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                1 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                h => IpAddr::V4(Ipv4Addr::new(10, 0, 0, *h + k as u8 % 2)),
            };
            // `spread`: distinct names and ports for most nodes, so the fast path decides.
            let (name, base) = if spread {
                (format!("n{i}"), 100 * i as u16)
            } else {
                (format!("n{name}"), 0)
            };
            let at = |k: usize| SocketAddr::new(ip(k), base + ports[k]);
            specs.push(NodeSpec {
                name: name.as_str().try_into().unwrap(),
                portal: at(0),
                storer: at(1),
                source: at(2),
            }).unwrap();
        }
        let c = Box::new(ClusterSpec::<1024>::with_defaults(specs, 1));
        // The per-node rules come first for a node, then its pairs with later nodes; with no
        // error of a node's own the verdict is the pairwise one.
        let own_ok = c.nodes.iter().all(|a| {
            let o = [a.portal, a.storer, a.source];
            o[0].port() != o[1].port() && o[0].port() != o[2].port() && o[1].port() != o[2].port()
        });
        proptest::prop_assume!(own_ok);
        let mut scratch = vec![u64::MAX; validation_scratch_words(c.nodes.len())];
        proptest::prop_assert_eq!(c.validate_in(&mut scratch), pairwise_reference(&c));
        proptest::prop_assert_eq!(c.validate(), pairwise_reference(&c));
    }
}

#[test]
fn thousands_of_nodes_on_distinct_ports_validate_quickly_with_scratch() {
    // The node list in a `Vec`, as a server holds it: no large stack.
    let nodes: Vec<NodeSpec> = (0..8192u16)
        .map(|i| {
            let a = |k: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1 + 3 * i + k);
            NodeSpec {
                name: format!("n{i}").as_str().try_into().unwrap(),
                portal: a(0),
                storer: a(1),
                source: a(2),
            }
        })
        .collect();
    let c = ClusterModel::with_defaults(nodes, 3);
    let mut scratch = vec![0; validation_scratch_words(c.nodes.len())];
    let start = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(c.validate_in(&mut scratch), Ok(()));
    }
    // A duplicate far apart is still found with scratch.
    let mut dup = c.clone();
    dup.nodes[8000].name = dup.nodes[3].name.clone();
    assert_eq!(
        dup.validate_in(&mut scratch),
        Err(ConfigError::DuplicateName {
            first: 3,
            second: 8000
        })
    );
    // Pairwise, 20 validations of 8,192 nodes compare 670 million pairs: many seconds even
    // in a release build. Linear, they take milliseconds.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn builds_and_finds_the_enforcer() {
    let p = dqe_tests::bin("dqe-enforcer");
    assert!(p.is_file());
}

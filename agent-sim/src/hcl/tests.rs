use super::*;

#[test]
fn hcl_reads_as_the_json_a_config_file_would_hold() {
    let hcl = r#"
        # Consul 1.4 spelling, then the acl block
        acl_master_token = "root"
        acl {
          enabled = true
          default_policy = "deny"
          tokens { master = "m" }
        }
        acl { tokens { agent = "a" } }
        ports = { http = 8500 }
        ratio = 3333333333333333333333333333333333333333.333
        big = 99999999999999999999
        mode = 0755
        mask = 0x1F
        offset = -12
        retry_join = ["a", "b"]
        service "web" "v2" { port = 80.5 }
    "#;
    assert_eq!(
        hcl_to_json(hcl).unwrap(),
        serde_json::json!({
            "acl_master_token": "root",
            "acl": {"enabled": true, "default_policy": "deny", "tokens": {"master": "m", "agent": "a"}},
            "ports": {"http": 8500},
            "ratio": 3.333333333333333e39_f64,
            "big": 1e20_f64,
            "mode": 493,
            "mask": 31,
            "offset": -12,
            "retry_join": ["a", "b"],
            "service": {"web": {"v2": {"port": 80.5}}},
        })
    );
}

#[test]
fn labels_count_as_nesting() {
    let deep = format!("a {} {{ x = 1 }}", "\"l\" ".repeat(100_000));
    let err = hcl_to_json(&deep).unwrap_err();
    assert_eq!(
        err.message,
        format!("nesting deeper than {MAX_NESTING} levels")
    );
    let ok = format!("a {} {{ x = 1 }}", "\"l\" ".repeat(MAX_NESTING - 2));
    assert!(hcl_to_json(&ok).is_ok());
}

#[test]
fn hcl_syntax_errors_say_where() {
    let err = hcl_to_json("acl {\n  enabled = \n}").unwrap_err();
    assert_eq!((err.line, err.column), (3, 1), "{err:?}");
}

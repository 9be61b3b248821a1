//! Which keys of `msg` a script function can read, found once per compiled version, so the worker
//! builds only those (`engine::MessageBuilder`).
//!
//! Why: building the whole `msg` map (address, args, parts, captures, the peer, ...) and dropping it
//! again was the largest part of a short handler's cost; `fn on_message(msg) { send("out",
//! msg.address, msg.args) }` needs two keys of nine. The rule is deliberately simple and
//! conservative: when every use of the parameter's name anywhere in the script (every function, the
//! top level) is a property read or write `msg.key...`, the function gets those keys; any other use
//! (`msg` passed to a function or stored, indexed with `msg["key"]`, a method called on it, put in a
//! string, captured by a closure) gives it the whole map, as before. A script sees no difference
//! either way: keys it never names are keys it cannot read.
//!
//! Rhai exposes its syntax tree only under its `internals` feature (`AST::walk`); that is the one
//! use of it.

use rhai::{ASTNode, Expr, AST};

use super::engine::MSG_KEYS;

/// A set of `msg` keys: bit `i` is `MSG_KEYS[i]`, bit [`VALUE`] is `value` (peer payloads).
pub type Keys = u16;

/// The bit of `value`, the key only peer messages have.
pub const VALUE: Keys = 1 << MSG_KEYS.len();
/// Every key.
pub const ALL: Keys = (1 << (MSG_KEYS.len() + 1)) - 1;

/// The keys of `msg` a function whose message parameter is `param` can read.
pub fn msg_keys(ast: &AST, param: &str) -> Keys {
    let mut keys: Keys = 0;
    let mut whole = false;
    ast.walk(&mut |path: &[ASTNode]| {
        let Some((ASTNode::Expr(node @ Expr::Variable(var, ..)), above)) = path.split_last() else {
            return true;
        };
        if var.1.as_str() != param {
            return true;
        }
        match above.last() {
            Some(ASTNode::Expr(Expr::Dot(dot, ..))) if std::ptr::eq(&dot.lhs, *node) => {
                match first_property(&dot.rhs) {
                    Some(name) => keys |= key_bit(name),
                    None => whole = true,
                }
            }
            _ => whole = true,
        }
        !whole
    });
    if whole {
        ALL
    } else {
        keys
    }
}

/// The property a chain starts with: `address` in `.address`, `.args[0]`, `.peer.send(x)`.
fn first_property(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Property(property, ..) => Some(property.2.as_str()),
        Expr::Dot(chain, ..) | Expr::Index(chain, ..) => first_property(&chain.lhs),
        _ => None,
    }
}

/// The bit of a key of `msg`; 0 for a key `msg` does not have (a script may add it).
fn key_bit(name: &str) -> Keys {
    if name == "value" {
        return VALUE;
    }
    MSG_KEYS
        .iter()
        .position(|k| *k == name)
        .map_or(0, |i| 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(script: &str) -> Vec<&'static str> {
        let ast = rhai::Engine::new().compile(script).expect("compiles");
        let keys = msg_keys(&ast, "msg");
        if keys == ALL {
            return vec!["ALL"];
        }
        let mut names: Vec<&str> = MSG_KEYS
            .iter()
            .enumerate()
            .filter(|(i, _)| keys & (1 << i) != 0)
            .map(|(_, k)| *k)
            .collect();
        if keys & VALUE != 0 {
            names.push("value");
        }
        names
    }

    #[test]
    fn property_reads_name_their_keys() {
        assert_eq!(
            keys_of("fn on_message(msg) { send(\"out\", msg.address, msg.args); }"),
            ["address", "args"]
        );
        assert_eq!(
            keys_of("fn f(msg) { let x = msg.args[0] + msg.captures[1]; msg.peer.send_osc(\"/a\", [x]); }"),
            ["args", "captures", "peer"]
        );
        assert_eq!(
            keys_of("fn f(msg) { if msg.route == \"a\" && msg.address.len() > 2 { print(msg.value.x); } }"),
            ["address", "route", "value"]
        );
        // Writing a key (new or not) is still a property use.
        assert_eq!(
            keys_of(
                "fn f(msg) { msg.args[0] = 1; msg.extra = 2; send(\"o\", msg.address, msg.args); }"
            ),
            ["address", "args"]
        );
        assert_eq!(keys_of("fn f(msg) { 1 }"), Vec::<&str>::new());
    }

    #[test]
    fn any_other_use_needs_the_whole_map() {
        for script in [
            "fn f(msg) { g(msg) } fn g(m) { m.address }",
            "fn f(msg) { state.last = msg; }",
            "fn f(msg) { msg[\"address\"] }",
            "fn f(msg) { msg.keys() }",
            "fn f(msg) { print(`${msg}`); }",
            "fn f(msg) { let m = msg; m.address }",
            "fn f(msg) { msg }",
            "fn f(msg) { msg = #{}; }",
            "fn f(msg) { let c = || msg.address; c.call() }",
            "fn f(msg) { msg?.address; type_of(msg) }",
            "let msg = 1; msg;",
            "msg",
        ] {
            assert_eq!(keys_of(script), ["ALL"], "{script}");
        }
    }

    #[test]
    fn another_functions_msg_counts_too() {
        // Conservative: a different function's `msg` is not told apart from the handler's.
        assert_eq!(
            keys_of("fn f(msg) { msg.address } fn g(msg) { msg.parts }"),
            ["address", "parts"]
        );
        assert_eq!(
            keys_of("fn f(msg) { msg.address } fn g(msg) { h(msg) }"),
            ["ALL"]
        );
    }
}

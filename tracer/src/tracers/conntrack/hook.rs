//! Which netfilter hook dropped a packet. The drop record has no hook number (`kfree_skb` gets
//! the packet, the return address inside `nf_hook_slow` and the reason; the hook is in
//! `nf_hook_slow`'s own arguments), but its kernel stack has the function that called
//! `nf_hook_slow`: the NF_HOOK family of inline wrappers runs each hook from one function of
//! the IP stack, named here from /proc/kallsyms.

use crate::kernel::symbols;

/// `nf_hook_slow`, and `nf_hook_slow_list`, which calls it for a list of received packets.
const HOOK_RUNNERS: &[&str] = &["nf_hook_slow", "nf_hook_slow_list"];

/// The IP stack's functions that run a hook, with the hook. A caller not listed (ARP, the
/// bridge, a function inlined into one that is not listed) gives no hook: never a guess.
const CALLERS: &[(&str, &str)] = &[
    ("ip_rcv", "prerouting"),
    ("ip_list_rcv", "prerouting"),
    ("ip_sublist_rcv", "prerouting"),
    ("ipv6_rcv", "prerouting"),
    ("ipv6_list_rcv", "prerouting"),
    ("ip6_sublist_rcv", "prerouting"),
    ("ip_local_deliver", "input"),
    ("ip6_input", "input"),
    ("ip_forward", "forward"),
    ("ip6_forward", "forward"),
    ("__ip_local_out", "output"),
    ("ip_local_out", "output"),
    ("__ip6_local_out", "output"),
    ("ip6_local_out", "output"),
    ("ip6_xmit", "output"),
    ("ip_output", "postrouting"),
    ("ip_mc_output", "postrouting"),
    ("ip6_output", "postrouting"),
];

/// Address ranges of the hook runners and of [`CALLERS`] on this kernel.
#[derive(Clone, Debug, Default)]
pub struct HookCallers {
    runners: Vec<(u64, u64)>,
    callers: Vec<(u64, u64, &'static str)>,
}

impl HookCallers {
    /// From /proc/kallsyms; without it (unreadable, addresses hidden) every hook is unknown.
    pub fn from_kallsyms() -> Self {
        let names: Vec<&'static str> = HOOK_RUNNERS
            .iter()
            .copied()
            .chain(CALLERS.iter().map(|(name, _)| *name))
            .collect();
        let ranges = match symbols::function_ranges(&names) {
            Ok(ranges) => ranges,
            Err(e) => {
                log::warn!("{e:#}: drops are shown without their netfilter hook");
                return Self::default();
            }
        };
        let hook_of = |name: &str| CALLERS.iter().find(|(n, _)| *n == name).map(|(_, h)| *h);
        Self {
            runners: ranges
                .iter()
                .filter(|(name, _, _)| HOOK_RUNNERS.contains(name))
                .map(|(_, start, end)| (*start, *end))
                .collect(),
            callers: ranges
                .iter()
                .filter_map(|(name, start, end)| Some((*start, *end, hook_of(name)?)))
                .collect(),
        }
    }

    /// The hook of a drop whose kernel stack is `stack` (return addresses, innermost first):
    /// that of the frame right after the hook runner's, if it is a listed caller.
    pub fn hook(&self, stack: &[u64]) -> Option<&'static str> {
        let within = |addr: u64, (start, end): (u64, u64)| addr > start && addr <= end;
        let runner = |addr: u64| self.runners.iter().any(|r| within(addr, *r));
        let first = stack.iter().position(|a| runner(*a))?;
        let caller = stack[first..].iter().find(|a| !runner(**a))?;
        self.callers
            .iter()
            .find(|(start, end, _)| within(*caller, (*start, *end)))
            .map(|(_, _, hook)| *hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_after_the_hook_runner_names_the_hook() {
        let hooks = HookCallers {
            runners: vec![(0x100, 0x200), (0x200, 0x240)],
            callers: vec![(0x1000, 0x1100, "output"), (0x2000, 0x2100, "prerouting")],
        };
        // kfree_skb's frames, nf_hook_slow, its caller, then further callers.
        assert_eq!(
            hooks.hook(&[0x50, 0x150, 0x1010, 0x2010, 0]),
            Some("output")
        );
        // Through nf_hook_slow_list.
        assert_eq!(
            hooks.hook(&[0x50, 0x150, 0x210, 0x2010, 0]),
            Some("prerouting")
        );
        // A caller not listed is no hook, even with a listed one further out.
        assert_eq!(hooks.hook(&[0x150, 0x3000, 0x2010]), None);
        // No hook runner on the stack (no stack at all).
        assert_eq!(hooks.hook(&[0x1010, 0x2010]), None);
        assert_eq!(hooks.hook(&[0; 4]), None);
    }

    #[test]
    fn this_kernels_hook_runner_and_callers_are_found() {
        let hooks = HookCallers::from_kallsyms();
        assert_eq!(hooks.runners.len(), HOOK_RUNNERS.len(), "{hooks:?}");
        assert!(!hooks.callers.is_empty(), "{hooks:?}");
    }
}

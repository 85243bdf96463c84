/**
 * Configurations that validate but cannot serve anyone, worded as what to add. `install` and `configure` print
 * them as warnings, `diagnose` as a failed check, and the admin /readyz shows them as detail (without failing
 * readiness: a load balancer would only take the node out, which fixes nothing).
 */

/** The built-in broker (no brokerUrl) with no [[desktops]]: every user who signs in is told there is no desktop. */
export function noDesktopsAdvice(c: {
  readonly brokerUrl: string;
  readonly desktops: readonly unknown[];
}): string | undefined {
  if (c.brokerUrl !== "" || c.desktops.length > 0) return undefined;
  return (
    "no --broker-url and no [[desktops]]: the built-in broker has no desktop to hand out, so every user who signs " +
    "in is told there is none. Add --broker-url https://BROKER (pcoip-cmsg configure --broker-url …), or " +
    "[[desktops]] tables in /etc/pcoip-cmsg/pcoip-cmsg.toml plus how users sign in: local accounts " +
    "(pcoip-cmsg user add NAME) or [ldap]"
  );
}

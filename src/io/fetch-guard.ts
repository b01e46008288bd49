/**
 * What a remote media fetch may reach: the domain allow-list, and hosts that are not public
 * (loopback, private, link-local…), refused as URL literals and again on the address DNS gives.
 */
import dns from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

const NON_PUBLIC_V4 = new BlockList();
const NON_PUBLIC_V6 = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3],
] as const) {
  NON_PUBLIC_V4.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 127],
  ['64:ff9b::', 96],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  NON_PUBLIC_V6.addSubnet(net, prefix, 'ipv6');
}

/** Loopback, private, link-local, CGNAT, multicast, unspecified or IPv4-mapped addresses. */
export function isNonPublicAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 4) return NON_PUBLIC_V4.check(ip, 'ipv4');
  // IPv4-mapped (::ffff:a.b.c.d) addresses are refused whatever they map to.
  return /^::ffff:/i.test(ip) || NON_PUBLIC_V6.check(ip, 'ipv6');
}

/** Whether `host` is one of `domains` or a subdomain of one (case-insensitive, no trailing dot). */
export function domainAllowed(host: string, domains: readonly string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return domains.some((d) => {
    const domain = d
      .toLowerCase()
      .replace(/^\*?\./, '')
      .replace(/\.$/, '');
    return domain !== '' && (h === domain || h.endsWith(`.${domain}`));
  });
}

/** A DNS lookup that fails with `refuse(message)` when the host resolves to a non-public address. */
export function guardedLookup(refuse: (message: string) => Error): LookupFunction {
  return (hostname, lookupOptions, callback) => {
    dns.lookup(hostname, { ...lookupOptions, all: true }, (err, addresses) => {
      if (err) {
        callback(err, '', 0);
        return;
      }
      const blocked = addresses.find((a) => isNonPublicAddress(a.address));
      if (blocked) {
        const message = `${hostname} resolves to ${blocked.address}, not a public address; it is not fetched from`;
        callback(refuse(message) as NodeJS.ErrnoException, '', 0);
        return;
      }
      if (lookupOptions.all) callback(null, addresses);
      else callback(null, addresses[0].address, addresses[0].family);
    });
  };
}

/** Why one hop of a remote fetch may not be fetched (scheme, allow-list, a literal non-public IP), or undefined. */
export function hopRefusal(
  url: URL,
  options: { allowedDomains?: readonly string[]; allowPrivateAddresses?: boolean },
): { message: string; problem: 'invalid_source' | 'not_allowed' } | undefined {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return {
      message: `only http(s) URLs can be fetched, not ${url.protocol} (${describeUrl(url)})`,
      problem: 'invalid_source',
    };
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (options.allowedDomains && !domainAllowed(host, options.allowedDomains)) {
    return {
      message: `the host ${host} is not in the allowed media domains (${options.allowedDomains.join(', ')})`,
      problem: 'not_allowed',
    };
  }
  if (options.allowPrivateAddresses === false && isNonPublicAddress(host)) {
    return { message: `${host} is not a public address; it is not fetched from`, problem: 'not_allowed' };
  }
  return undefined;
}

/** The URL without user name or password, cut to 200 characters, for messages. */
export function describeUrl(url: URL): string {
  let href = url.href;
  if (url.username || url.password) {
    const copy = new URL(url.href);
    copy.username = '';
    copy.password = '';
    href = copy.href;
  }
  return href.length > 200 ? `${href.slice(0, 197)}...` : href;
}

package state

import (
	"reflect"
	"testing"
)

// FuzzDecodeLease reads arbitrary bytes as a stored lease, as a restart
// does with whatever the store holds: decodeLease answers (a lease or an
// error, never a panic), and a lease it returns is stored again unchanged.
func FuzzDecodeLease(f *testing.F) {
	for _, s := range []string{
		`{"id":"l1","owner":"vm","acquired_ns":1}`,
		`{"id":"l2","vpc":{"vni":9,"remote_vtep":"198.18.0.9","vpc_ip":"10.1.0.5","vpc_cidrs":["10.1.0.0/16"],"peer_mac":"02:00:00:00:00:09"},"egress_allow":["198.18.5.0/24"]}`,
		`{"id":"l3","vpc":{"vni":15728640,"remote_vtep":"198.18.0.9","vpc_ip":"10.1.0.5","vpc_cidrs":[]}}`,
		`{"id":"l4","tap_owner":{"uid":4242,"gid":4243}}`, `{"id":"l5","tap_owner":{"uid":4294967295,"gid":0}}`,
		`{"egress_allow":["garbage"]}`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLease(b)
		if err != nil {
			return
		}
		enc, err := encodeLease(l)
		if err != nil {
			t.Fatalf("a decoded lease does not encode: %v", err)
		}
		again, err := decodeLease(enc)
		if err != nil {
			t.Fatalf("a re-encoded lease does not decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(l, again) {
			t.Fatalf("lease changed through the store:\n%+v\n%+v", l, again)
		}
	})
}

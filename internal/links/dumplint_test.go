package links

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dumpCalls are netlink's dumps of links, addresses, routes, rules and
// neighbours, which the kernel may mark interrupted.
var dumpCalls = map[string]bool{
	"LinkList": true, "LinkListFiltered": true,
	"AddrList":  true,
	"RouteList": true, "RouteListFiltered": true, "RouteListFilteredIter": true,
	"RuleList": true, "RuleListFiltered": true,
	"NeighList": true, "NeighListExecute": true, "NeighProxyList": true,
}

// dumpCallAllowed are the files that may call them directly: the retrying
// helpers, and the test that counts how often a plain dump is interrupted.
var dumpCallAllowed = map[string]bool{
	"internal/links/dump.go":      true,
	"internal/links/dump_test.go": true,
}

// TestEveryDumpIsRetried fails on any call in the tree, product, harness or
// test, that dumps links, addresses, routes, rules or neighbours through
// netlink directly instead of through the retrying helpers of this package:
// such a call returns a partial list now and then on a busy host.
func TestEveryDumpIsRetried(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from %s: %v", root, err)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor" || n == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files++
		if dumpCallAllowed[rel] {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && dumpCalls[sel.Sel.Name] {
				t.Errorf("%s: %s dumps without retrying interrupted dumps: use links.%s", fset.Position(call.Pos()), sel.Sel.Name, helperFor(sel.Sel.Name))
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("checked only %d Go files under %s", files, root)
	}
}

func helperFor(call string) string {
	if strings.HasPrefix(call, "Interface") {
		return "Links (or netlink.LinkByName, which is no dump)"
	}
	for _, h := range []string{"Link", "Addr", "Route", "Rule", "Neigh"} {
		if strings.HasPrefix(call, h) {
			return h + "s"
		}
	}
	return call
}

// Command client calls keygate's AssociateKeyPairs from Go with grpc-go.
//
// Generate the code first (examples/go/run.sh does it), then:
//
//	KEYGATE_TOKEN=... client --target 127.0.0.1:8080 --region ap-guangzhou \
//	    --instance ins-xxxxxxxx --key skey-xxxxxxxx [--idempotency-key KEY] [--deadline 30s] [--wait]
//
// Prints one JSON line: the answer, or the failure with its gRPC code and keygate.v1.ErrorDetail.
// Exit status 0 on success, 1 when keygate refused or failed the call.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	keygatev1 "keygate.dev/gen/go/keygate/v1"
)

// list is a flag that may be repeated.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// upperSnake turns grpc-go's code names (PermissionDenied) into the protocol's (PERMISSION_DENIED).
func upperSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) && !unicode.IsUpper(rune(s[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func newKey() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func main() {
	target := flag.String("target", "127.0.0.1:8080", "host:port of keygate's API port")
	region := flag.String("region", "", "product region, e.g. ap-guangzhou")
	var instances, keys list
	flag.Var(&instances, "instance", "instance id (repeat for several)")
	flag.Var(&keys, "key", "key pair id (repeat for several)")
	forceStop := flag.Bool("force-stop", false, "force-stop running instances (if the policy allows)")
	wait := flag.Bool("wait", false, "answer once the cloud's tasks have finished")
	idempotencyKey := flag.String("idempotency-key", "", "reuse it when you retry (default: a new random key)")
	deadline := flag.Duration("deadline", 30*time.Second, "how long keygate may take in all")
	flag.Parse()

	token := os.Getenv("KEYGATE_TOKEN")
	if token == "" {
		fmt.Fprintln(os.Stderr, "set KEYGATE_TOKEN to your tenant's bearer token")
		os.Exit(2)
	}
	if *idempotencyKey == "" {
		*idempotencyKey = newKey()
	}

	// Plain text here; with KEYGATE_TLS_* use grpc.WithTransportCredentials(credentials.NewTLS(...)).
	// (WithInsecure is what Debian's grpc 1.33 offers; newer releases spell it insecure.NewCredentials().)
	conn, err := grpc.Dial(*target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)

	client := keygatev1.NewKeyPairServiceClient(conn)
	res, err := client.AssociateKeyPairs(ctx, &keygatev1.AssociateKeyPairsRequest{
		Region:            *region,
		InstanceIds:       instances,
		KeyIds:            keys,
		ForceStop:         *forceStop,
		WaitForCompletion: *wait,
		IdempotencyKey:    *idempotencyKey,
	})
	out := json.NewEncoder(os.Stdout)
	if err != nil {
		st := status.Convert(err)
		failure := map[string]interface{}{"ok": false, "code": upperSnake(st.Code().String()), "message": st.Message()}
		// Details() unpacks grpc-status-details-bin (google.rpc.Status); ErrorDetail is registered
		// by the generated package.
		for _, d := range st.Details() {
			if detail, ok := d.(*keygatev1.ErrorDetail); ok {
				failure["reason"] = detail.GetReason()
				failure["upstream_code"] = detail.GetUpstreamCode()
				failure["upstream_request_id"] = detail.GetUpstreamRequestId()
				failure["retry_after_ms"] = detail.GetRetryAfterMs()
			}
		}
		_ = out.Encode(failure)
		os.Exit(1)
	}
	outcomes := []map[string]string{}
	for _, i := range res.GetInstances() {
		outcomes = append(outcomes, map[string]string{
			"instance_id": i.GetInstanceId(), "state": i.GetState(), "message": i.GetMessage(),
		})
	}
	_ = out.Encode(map[string]interface{}{
		"ok":              true,
		"request_id":      res.GetRequestId(),
		"deduplicated":    res.GetDeduplicated(),
		"idempotency_key": *idempotencyKey,
		"instances":       outcomes,
	})
}

# FleetForge example Rego pack: an egress allow-list with an output-token limit.
#
# data.config is the [config] table of pack.toml:
#   hosts      hosts calls may go to: exact names or globs where `*` matches any run of characters
#              ("*.example.com" matches "a.b.example.com" but not "example.com"), case-insensitive
#   max_tokens the largest max_tokens an LLM call may ask for; a call that sets none is capped to it
#
# The proxy evaluates data.fleetforge.allow (a bool), data.fleetforge.reasons (a set of strings)
# and data.fleetforge.obligations (an object, optional). See docs/reference/policy-input.md.
package fleetforge

default allow := false

allow if {
	host_allowed
	not tokens_over_limit
}

host_allowed if {
	some pattern in data.config.hosts
	host_matches(lower(pattern))
}

# Hosts in the input document are already lower case.
host_matches(pattern) if pattern == input.request.host

host_matches(pattern) if {
	contains(pattern, "*")
	glob.match(pattern, null, input.request.host)
}

tokens_over_limit if {
	is_number(input.llm.max_tokens)
	input.llm.max_tokens > data.config.max_tokens
}

no_token_limit if {
	is_object(input.llm)
	input.llm.max_tokens == null
}

reasons contains sprintf("host %s is not in the allow-list", [input.request.host]) if not host_allowed

reasons contains msg if {
	tokens_over_limit
	msg := sprintf(
		"max_tokens %d for model %s exceeds the limit %d",
		[input.llm.max_tokens, input.llm.model, data.config.max_tokens],
	)
}

reasons contains sprintf("max_tokens not set; capped to %d", [data.config.max_tokens]) if no_token_limit

obligations := {"max_tokens_cap": data.config.max_tokens} if no_token_limit

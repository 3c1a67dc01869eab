"""Hostile answers for the reward verifiers: tests/test_sandbox.py asserts each is bounded, and
benchmarks/reward_bench.py times them."""

# The nested powers (issue 13): one sympy gcd of two 500,000+ digit integers, a single C
# call that SIGALRM cannot interrupt (4-14 s), with 5-, 6- and 7-digit bases; and relatives.
NESTED_POWERS = {f"{n}-digit bases": f"\\frac{{{'9' * n}^{{99999}}}}{{{'9' * (n - 1)}8^{{99999}}}}"
                 for n in (5, 6, 7)} | {
    "exponent product": "2^{99999 \\cdot 99999}",
    "200-digit base": "9" * 200 + "^{99999}",
    "decimal base": "1.5^{99999}",
    "fraction base": "\\left(\\frac{99999}{99998}\\right)^{99999}",
    "sum of big powers": "\\frac{10^{99999}+1}{10^{99998}+7}",
    "binomial": "\\binom{999999}{499999}",
    "many mid-size powers": "\\frac{" + "\\cdot ".join(["7^{3000}"] * 40) + "}{3^{2000}}",
} | {  # issue 22: bases in other delimiters, exponents in superscript digits (5.5-6.5 s each)
    f"{name} bases": f"\\frac{{{left}99999{right}^{{99999}}}}{{{left}99998{right}^{{99999}}}}"
    for name, left, right in [("|..|", "|", "|"), ("\\left|..\\right|", "\\left|", "\\right|"),
                              ("floor", "\\lfloor ", "\\rfloor"), ("ceiling", "\\lceil ", "\\rceil")]
} | {
    "superscript exponents": "\\frac{|99999|⁹⁹⁹⁹⁹}{|99998|⁹⁹⁹⁹⁹}",
    "superscript digits alone": "\\frac{99999⁹⁹⁹⁹⁹}{99998⁹⁹⁹⁹⁹}",
    "spaced chain": "99999^{99} ^{999}",
}

HOSTILE = {
    "power tower": "\\boxed{9^{9^{9^9}}}",
    "python power tower": "\\boxed{9**9**9**9}",
    "power of power": "\\boxed{(99999^{99999})^{99999}}",
    "huge exponent": "\\boxed{2^{99999999999}}",
    "10,000 digits": "\\boxed{" + "7" * 10_000 + "}",
    "200 nested parentheses": "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}",
    "200 nested braces": "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "25 nested fractions": "\\boxed{" + "\\frac{1}{" * 25 + "2" + "}" * 25 + "}",
    "200 KB response": "word " * 40_000 + "\\boxed{5}",
    "200 KB box": "\\boxed{" + "x+" * 100_000 + "1}",
    "200 KB of braces": "{" * 200_000,
    "unbalanced braces": "\\boxed{5}}}}{{{\\boxed{\\frac{1}{2}",
    "python code": "\\boxed{__import__('os').system('echo pwned')}",
    "python comprehension": "\\boxed{[x for x in range(10**10)]}",
    "division by zero": "\\boxed{1/0}",
    "factorial of a power": "\\boxed{(10^{10})!}",
    "huge binomial": "\\boxed{\\binom{1000000000}{500000000}}",
    "integral": "\\boxed{\\int_0^{\\infty} e^{-x^2} \\sin(x^{99}) dx}",
    "sine of a huge number": "\\boxed{\\sin(10^{99999})}",
    "many boxes": "\\boxed{1}" * 20_000,
} | {name: f"\\boxed{{{answer}}}" for name, answer in NESTED_POWERS.items()}
